"""`serve()`: an OpenAI-compatible HTTP server over the continuous-batching Engine (uvicorn + Starlette).

The socket is bound and the file checked before anything slow, so a taken port or a bad file is one
typed error; the server then answers at once (GET /health: 503 while loading, 200 when ready) while
the weights load in a thread. SIGINT/SIGTERM: uvicorn stops accepting, the engine ends every
in-flight request with a final chunk (finish_reason length), the streams close, exit status 0; while
the weights are loading, the load stops at its next tensor and serve returns without a "ready".
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from marco_gguf.arch.sampling import model_sampling
from marco_gguf.base.errors import Cancelled, MarcoGGUFError, ServeError
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.llama.engine import Engine, check_parallel
from marco_gguf.llama.loader import check_model, quiet_stderr
from marco_gguf.llama.session import DEFAULT_CTX
from marco_gguf.llama.slots import SLOT_PROMPT_SIMILARITY, check_similarity
from marco_gguf.server.app import ServerState, create_app, model_id

GRACE_S = 30  # longest wait for connections after a stop signal: streams end within one engine step


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({e.strerror or e})",
            "choose another --port or --host, or stop the program using it",
        ) from None
    return sock


def _uvicorn_server(app, on_exit: Callable[[], None]):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # end in-flight requests now (each stream gets its final chunk), off the signal handler
            threading.Thread(target=on_exit, name="marco-gguf-stop", daemon=True).start()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own re-raises the signal after the graceful shutdown, which makes a clean stop exit
            # with 130/143; a stop asked for by a signal is a normal end here
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=GRACE_S
    )
    return Server(config)


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    parallel: int = 4,
    ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    api_key: str | None = None,
    queue: int = 64,
    cors: str | None = None,
    sampling: Mapping[str, Any] | None = None,
    max_tokens: int | None = 2048,
    slot_prompt_similarity: float = SLOT_PROMPT_SIMILARITY,
    progress: Progress | None = None,
) -> None:
    """Serve `model` until SIGINT/SIGTERM. `sampling` (settings by `Sampling` field, over the GGUF's own
    general.sampling.* and Marco's defaults) is what requests that set nothing get; `max_tokens` None lets a
    reply run to the end of the context. A request reuses an idle slot's cached conversation when the
    common prefix is more than `slot_prompt_similarity` of its prompt (llama-server's option), else it takes
    an empty slot, else the least recently used one."""
    info = check_model(model, ctx=ctx)
    check_parallel(parallel)
    check_similarity(slot_prompt_similarity)
    sock = _listen(host, port)
    report = progress or (lambda *_: None)
    stopping = threading.Event()  # a stop signal came: a load under way ends at its next tensor
    options: dict[str, Any] = dict(
        ctx=ctx,
        parallel=parallel,
        threads=threads,
        queue_size=queue,
        sampling=sampling,
        slot_prompt_similarity=slot_prompt_similarity,
    )
    state = ServerState(
        model_id(info.path),
        max_tokens=max_tokens,
        defaults=model_sampling(info.sampling, sampling),
        load=functools.partial(Engine, info.path, cancelled=stopping.is_set, **options),
        on_ready=lambda: None if stopping.is_set() else report(ProgressEvent(2, 2, "steps", "ready")),
    )

    def stop() -> None:
        stopping.set()
        state.stop_engine()

    server = _uvicorn_server(create_app(state, api_key=api_key, cors=cors), stop)
    state.on_failure = lambda: setattr(server, "should_exit", True)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    report(ProgressEvent(1, 2, "steps", f"loading {info.path.name}; listening on {url}"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state.engine is not None:
            with quiet_stderr():  # llama.cpp logs the context's teardown to fd 2
                state.engine.close()
    if state.failed is not None and not isinstance(state.failed, Cancelled):  # stopped while loading: a normal end
        if isinstance(state.failed, MarcoGGUFError):
            raise state.failed
        raise ServeError(f"{info.path.name}: the model failed to load ({state.failed})") from state.failed


__all__ = ["ServerState", "create_app", "serve"]
