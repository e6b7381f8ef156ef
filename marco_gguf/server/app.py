"""The HTTP layer: a Starlette app over one Engine, speaking OpenAI's API.

Requests are parsed and checked on the event loop (openai_api), submitted to the engine, whose
thread hands each piece of text back through `loop.call_soon_threadsafe`. Streams are Server-Sent
Events (`data: {chunk}` ... `data: [DONE]`, as OpenAI and llama-server send them). A client that
goes away cancels its job: Starlette cancels a stream's generator on `http.disconnect`, and a
non-streaming request watches for it; the engine frees the slot at its next step. Every error is
OpenAI's error JSON (never a traceback); the API key and the body size are checked before any route.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from marco_gguf.base.errors import ChatError, MarcoGGUFError, RequestError, ServerBusyError
from marco_gguf.llama.engine import Engine, Result, Sampling
from marco_gguf.server import lora_api, openapi
from marco_gguf.server import openai_api as api
from marco_gguf.server import props as server_props
from marco_gguf.server.metrics import prometheus_text
from marco_gguf.server.page import page, static_files
from marco_gguf.server.tools import ToolCallParser

# the page and its files ask for the key themselves; the API behind them does not answer without one
OPEN_PATHS = ("/", "/health", "/openapi.json")
OPEN_PREFIX = "/static/"
MAX_BODY = 4 * 2**20  # bytes; a full 32k-token conversation is well under 1 MiB of JSON
log = logging.getLogger("marco_gguf.server")


@dataclass
class ServerState:
    """The engine (None while loading) and the per-server defaults requests fall back on."""

    model_id: str
    defaults: Sampling = Sampling()
    max_tokens: int | None = None
    engine: Engine | None = None
    load: Callable[[], Engine] | None = None  # called in a thread at startup when there is no engine yet
    failed: BaseException | None = None
    on_failure: Callable[[], None] = lambda: None
    on_ready: Callable[[], None] = lambda: None
    created: int = field(default_factory=lambda: int(time.time()))

    def ready(self) -> Engine:
        if self.engine is None:
            raise ServerBusyError(
                "the model is loading" if self.failed is None else "the model failed to load",
                "retry in a few seconds (GET /health says when it is ready)",
            )
        return self.engine

    async def start(self) -> None:
        try:
            assert self.load is not None  # started only when there is a loader (create_app's lifespan)
            self.engine = await asyncio.to_thread(self.load)
            self.on_ready()
        except BaseException as e:  # reported by serve() once the server has stopped
            self.failed = e
            self.on_failure()

    def stop_engine(self) -> None:
        """End every request with a final result (safe to call more than once, from any thread)."""
        if self.engine is not None:
            self.engine.stop()


def error_response(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(api.error_body(message, kind, param, code), status_code=status)


def _from_error(e: MarcoGGUFError) -> JSONResponse:
    text = f"{e.message} ({e.hint})" if e.hint else e.message
    if isinstance(e, RequestError):
        return error_response(e.status, text, "invalid_request_error", e.param)
    if isinstance(e, ServerBusyError):
        return error_response(503, text, "unavailable_error")
    if isinstance(e, ChatError):
        return error_response(400, text, "invalid_request_error", "messages")
    return error_response(500, text, "server_error")


async def _on_error(request: Request, e: Exception) -> Response:
    if isinstance(e, MarcoGGUFError):
        return _from_error(e)
    if isinstance(e, HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        what = "no such endpoint" if e.status_code == 404 else str(e.detail).lower()
        response = error_response(e.status_code, f"{request.method} {request.url.path}: {what}", kind)
        response.headers.update(e.headers or {})  # a 405 names the methods allowed (Allow, RFC 9110)
        return response
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(e).__name__}); the server log has the details", "server_error")


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})", "send a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError(f"the request body is a JSON {type(data).__name__}, expected an object")
    return data


# --- generation -----------------------------------------------------------------------------------


def _submit(engine: Engine, gen: api.Generation) -> tuple[Any, asyncio.Queue]:
    loop, events = asyncio.get_running_loop(), asyncio.Queue[str | Result]()
    job = engine.submit(
        gen.prompt,
        max_tokens=gen.max_tokens,
        sampling=gen.sampling,
        stop=gen.stop,
        sink=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
        lora=gen.lora,
    )
    return job, events


async def _cancel_on_disconnect(request: Request, job) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


async def _result(request: Request, job, events: asyncio.Queue) -> Result:
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        while not isinstance(event := await events.get(), Result):
            pass
        return event
    finally:
        watcher.cancel()
        if job.result is None:
            job.cancel()


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(
    job, events: asyncio.Queue, gen: api.Generation, rid: str, model: str, chat: bool
) -> AsyncIterator[str]:
    """SSE chunks: (chat) a role delta, content / tool-call deltas, a final chunk with finish_reason and
    timings, the usage chunk if asked for, then [DONE]."""
    head = api.envelope("chat.completion.chunk" if chat else "text_completion", rid, model)
    parser = ToolCallParser() if gen.tools else None

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": delta.get("content", "")}
        return _sse({**head, "choices": [{**choice, "logprobs": None, "finish_reason": finish}], **extra})

    try:
        if chat:
            yield chunk({"role": "assistant", "content": ""})
        while not isinstance(event := await events.get(), Result):
            for delta in parser.feed(event) if parser else [{"content": event}]:
                yield chunk(delta)
        if event.finish_reason == "error":
            yield _sse(api.error_body(event.error or "generation failed", "server_error"))
        else:
            for delta in parser.close() if parser else []:
                yield chunk(delta)
            yield chunk({}, api.finish_reason(event, parser.calls if parser else []), timings=event.timings.as_dict())
            if gen.include_usage:
                yield _sse({**head, "choices": [], "usage": api.usage(event)})
        yield _sse("[DONE]")
    finally:  # also when Starlette cancels us because the client went away
        if job.result is None:
            job.cancel()


async def _generate(request: Request, parse: Callable, chat: bool) -> Response:
    state: ServerState = request.app.state.marco
    engine = state.ready()
    gen = parse(await _json_body(request), engine, state.defaults, state.max_tokens)
    job, events = _submit(engine, gen)
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    if gen.stream:
        return StreamingResponse(
            _stream(job, events, gen, rid, state.model_id, chat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    result = await _result(request, job, events)
    if result.finish_reason == "cancelled":
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    if result.finish_reason == "error":
        return error_response(500, result.error or "generation failed", "server_error")
    body = (
        api.chat_response(result, gen, rid, state.model_id) if chat else api.text_response(result, rid, state.model_id)
    )
    return JSONResponse(body)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, api.parse_chat, chat=True)


async def completions(request: Request) -> Response:
    return await _generate(request, api.parse_completion, chat=False)


# --- the rest -------------------------------------------------------------------------------------


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "marco-gguf"}


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(request.app.state.marco)]})


async def model(request: Request) -> Response:
    state: ServerState = request.app.state.marco
    if request.path_params["model"] != state.model_id:
        return error_response(
            404,
            f"the model {request.path_params['model']!r} does not exist (this server has {state.model_id!r})",
            "not_found_error",
            "model",
            "model_not_found",
        )
    return JSONResponse(_model_card(state))


async def props(request: Request) -> Response:
    state: ServerState = request.app.state.marco
    return JSONResponse(server_props.props(state.ready(), state.model_id, state.defaults, state.max_tokens))


async def slots(request: Request) -> Response:
    return JSONResponse(server_props.slots(request.app.state.marco.ready()))


async def openapi_document(request: Request) -> Response:
    return JSONResponse(openapi.document(api_key=request.app.state.api_key))


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.marco
    if state.engine is None:
        return error_response(
            503, "the model is loading" if state.failed is None else "the model failed to load", "unavailable_error"
        )
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    engine = request.app.state.marco.ready()
    return PlainTextResponse(prometheus_text(engine.metrics()), media_type="text/plain; version=0.0.4")


class Guard:
    """ASGI middleware: the API key (every path but /health and CORS preflights) and the body size,
    checked before routing, answered in OpenAI's error JSON."""

    def __init__(self, app, api_key: str | None, max_body: int) -> None:
        self.app, self.key, self.max_body = app, (api_key or "").encode(), max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path, method = scope["path"], scope["method"]
        if self.key and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX) and method != "OPTIONS":
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.key):
                reason = "a wrong API key" if given else "no API key"
                return await error_response(
                    401,
                    f"{reason} (send the header Authorization: Bearer KEY)",
                    "authentication_error",
                    code="invalid_api_key",
                )(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            status, what = (413, f"{int(length):,} bytes") if length.isdigit() else (400, f"{length!r}")
            return await error_response(
                status, f"the request body is {what}, the limit is {self.max_body:,} bytes", "invalid_request_error"
            )(scope, receive, send)
        seen = 0

        async def counted():  # a chunked body has no Content-Length: count as it arrives
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise RequestError(f"the request body is over the limit of {self.max_body:,} bytes", status=413)
            return message

        await self.app(scope, counted, send)


def create_app(
    state: ServerState, *, api_key: str | None = None, cors: str | None = None, max_body: int = MAX_BODY
) -> Starlette:
    """The ASGI app; `state.engine` is used as given, or built by `state.load` in a thread at startup."""
    from starlette.middleware.cors import CORSMiddleware

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loading = asyncio.create_task(state.start()) if state.engine is None and state.load else None
        yield
        if loading is not None:  # a load cannot be interrupted: let it end (serve() closes the engine)
            await loading

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/models/{model:path}", model),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/props", props),
        Route("/slots", slots),
        Route("/lora-adapters", lora_api.lora_adapters, methods=["GET", "POST"]),
        Route("/openapi.json", openapi_document),
        Mount("/static", app=static_files()),
    ]
    middleware = (
        [Middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["*"], allow_headers=["*"])] if cors else []
    ) + [Middleware(Guard, api_key=api_key, max_body=max_body)]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={Exception: _on_error, HTTPException: _on_error, MarcoGGUFError: _on_error},
    )
    app.state.marco, app.state.api_key = state, bool(api_key)
    return app


def model_id(path: str | Path) -> str:
    return Path(path).name
