"""OpenAI request bodies in, engine work out: every field checked (type, range, supported value) into a
`Generation`, and the response shapes (chat.completion, chat.completion.chunk, text_completion, usage).

A field of the wrong type or an unsupported value is a RequestError naming it (HTTP 400, OpenAI's
error JSON with `param`); fields this server does not use (user, metadata, store, ...) are ignored,
as llama-server ignores them. Field names and meanings follow OpenAI's API reference.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from marco_gguf.base.errors import ChatError, RequestError
from marco_gguf.base.jsonfields import MISSING, Fields, is_int, json_kind, json_text
from marco_gguf.llama.engine import Engine, Result, Sampling
from marco_gguf.server import tools as tool_calls

ROLES = ("system", "developer", "user", "assistant", "tool")  # developer: OpenAI's newer name for system
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names
MAX_STOP = 16
INT64 = 2**63 - 1
LORA_ENTRIES = 'a list of {"id": ..., "scale": ...} objects'


class Body(Fields):
    """A request's JSON object: Fields' typed getters, failing with RequestError(param=the field)."""

    def __init__(self, data: dict, where: str = "") -> None:
        super().__init__(data, Path("request"), RequestError, "see the OpenAI API reference", where)

    def fail(self, key: str, found: Any, expected: str) -> RequestError:
        # the client's value as it sent it (JSON: null, "a", {"k": 1}), not as Python prints it
        return RequestError(f"{self.where}{key} is {json_text(found)}, expected {expected}", param=f"{self.where}{key}")

    def _get(self, key: str, default: Any) -> Any:
        v = self.data.get(key)
        if v is None and default is MISSING:
            raise RequestError(f"{self.where}{key} is missing", param=f"{self.where}{key}")
        return default if v is None else v

    def sub(self, key: str) -> Body:
        return Body(self.obj(key, default={}), f"{self.where}{key}.")

    def only(self, key: str, allowed: tuple, why: str) -> None:
        """`key` is absent, null or one of `allowed`; anything else is unsupported here."""
        v = self.data.get(key)
        if v is not None and not any(v == a and type(v) is type(a) for a in allowed):
            raise RequestError(f"{self.where}{key} {json_text(v)} is not supported: {why}", param=f"{self.where}{key}")


@dataclass(frozen=True)
class Generation:
    """One request, checked: what to submit to the engine and how to answer."""

    prompt: list[int]
    sampling: Sampling
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    tools: bool = False  # parse <tool_call> blocks out of the reply
    lora: tuple[float, ...] | None = None  # a scale per LoRA adapter; None: the server's (GET /lora-adapters)


def common(body: Body, defaults: Sampling, default_max: int | None) -> dict:
    """The fields chat and text completions share: sampling, length, stop, stream."""
    body.only("n", (1,), "this server generates one choice per request (n = 1)")
    body.only("logprobs", (False,), "log probabilities are not returned")
    body.only("top_logprobs", (0,), "log probabilities are not returned")
    sampling = replace(
        defaults,
        temperature=body.number("temperature", lo=0.0, hi=2.0, default=defaults.temperature, exclusive_lo=False),
        top_p=body.number("top_p", lo=0.0, hi=1.0, default=defaults.top_p, exclusive_lo=False),
        top_k=body.int("top_k", lo=0, default=defaults.top_k),
        min_p=body.number("min_p", lo=0.0, hi=1.0, default=defaults.min_p, exclusive_lo=False),
        repeat_penalty=body.number(
            "repeat_penalty", lo=0.0, hi=10.0, default=defaults.repeat_penalty, exclusive_lo=False
        ),  # llama-server's extension
        presence_penalty=body.number(
            "presence_penalty", lo=-2.0, hi=2.0, default=defaults.presence_penalty, exclusive_lo=False
        ),
        frequency_penalty=body.number(
            "frequency_penalty", lo=-2.0, hi=2.0, default=defaults.frequency_penalty, exclusive_lo=False
        ),
        seed=_seed(body.int("seed", lo=-INT64 - 1, hi=INT64, default=defaults.seed)),
    )
    max_tokens = body.int("max_completion_tokens", lo=1, default=None)
    if max_tokens is None:
        max_tokens = body.int("max_tokens", lo=1, default=default_max)
    stop = body.data.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and not (
        isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop)
    ):
        raise body.fail("stop", stop, f"a string or a list of at most {MAX_STOP} strings")
    stream = body.bool("stream", default=False)
    options = body.sub("stream_options")
    if options.data and not stream:
        raise RequestError("stream_options is only allowed with stream: true", param="stream_options")
    return dict(
        sampling=sampling,
        max_tokens=max_tokens,
        stop=tuple(stop or ()),
        stream=stream,
        include_usage=options.bool("include_usage", default=False),
    )


def _seed(seed: int | None) -> int | None:
    # OpenAI takes any 64-bit seed, llama.cpp's sampler a 32-bit one: keep the low 32 bits
    return None if seed is None else seed & 0xFFFFFFFF


# --- /v1/chat/completions -------------------------------------------------------------------------


def parse_chat(data: dict, engine: Engine, defaults: Sampling, default_max: int | None) -> Generation:
    body = Body(data)
    body.str("model", default=None)  # any name is accepted (one model is served), as llama-server does
    options = common(body, defaults, default_max)
    messages = [_message(m, i) for i, m in enumerate(_list(body, "messages"))]
    tools, names, choice = _tools(body)
    grammar = tool_calls.response_grammar(_response_format(body))
    forced = choice not in ("auto", "none")
    parallel = body.bool("parallel_tool_calls", default=True)
    if forced:
        if grammar is not None:
            raise RequestError("response_format cannot be combined with a required tool call", param="response_format")
        grammar = tool_calls.tool_grammar(tools or [], names if choice == "required" else [choice], parallel)
    # a conversation that ends with the assistant's words is continued from them (llama-server's prefill)
    prefill = messages[-1]["role"] == "assistant" and "tool_calls" not in messages[-1]
    try:
        text = engine.template.render(messages, tools=tools if choice != "none" else None, continue_final=prefill)
    except ChatError as e:
        raise RequestError(e.message, param="messages") from None
    return Generation(
        prompt=engine.tokenize(text),
        **{**options, "sampling": replace(options["sampling"], grammar=grammar)},
        tools=bool(tools) and choice != "none",
        lora=_lora(body, engine),
    )


def _list(body: Body, key: str) -> list:
    items = body.data.get(key)
    if not isinstance(items, list) or not items:
        raise body.fail(key, items, "a non-empty list")
    return items


def _message(m: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise RequestError(f"{where} is {json_text(m)}, expected an object with role and content", param=where)
    f = Body(m, f"{where}.")
    role = f.str("role")
    if role not in ROLES:
        raise f.fail("role", role, " or ".join(ROLES))
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _content(f, role)}
    if role == "assistant":
        # OpenAI's SDK sends "content": null beside tool_calls; templates test `'</think>' in content`, so null
        # becomes "" as llama-server makes it (common/chat.cpp); an empty list of calls is no call
        out["content"] = out["content"] or ""
        if m.get("tool_calls") not in (None, []):
            calls = _list(f, "tool_calls")
            out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
    elif out["content"] is None:
        raise f.fail("content", None, "a string or a list of text parts")
    if role == "tool" and m.get("tool_call_id") is not None:
        out["tool_call_id"] = f.str("tool_call_id")
    return out


def _content(f: Body, role: str) -> str | None:
    content = f.data.get("content")
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise f.fail("content", content, "a string or a list of text parts")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = f"a {json_text(part.get('type'))} part" if isinstance(part, dict) else json_kind(part)
            raise RequestError(
                f"{f.where}content[{j}] is {kind}: only text parts are supported (Marco reads text only)",
                param=f"{f.where}content[{j}]",
            )
        texts.append(part["text"])
    return "".join(texts)


def _tool_call(c: Any, where: str) -> dict:
    f = Body(c if isinstance(c, dict) else {}, f"{where}.")
    f.only("type", ("function",), "tool calls are function calls")
    fn = f.sub("function")
    name, arguments = fn.str("name"), fn.str("arguments")
    return {"id": f.str("id", default=""), "type": "function", "function": {"name": name, "arguments": arguments}}


def _tools(body: Body) -> tuple[list[dict] | None, list[str], str]:
    """(tools as given, their names, tool choice: auto / none / required / a function's name)."""
    given = body.data.get("tools")
    if given is None or given == []:  # some clients send an empty list for "no tools"
        choice = body.data.get("tool_choice")
        if choice not in (None, "none", "auto"):
            raise RequestError("tool_choice needs tools", param="tool_choice")
        return None, [], "none"
    tools = _list(body, "tools")
    names = []
    for i, tool in enumerate(tools):
        f = Body(tool if isinstance(tool, dict) else {}, f"tools[{i}].")
        if f.data.get("type") != "function":
            raise f.fail("type", f.data.get("type"), '"function"')
        fn = f.sub("function")
        name = fn.str("name")
        if not TOOL_NAME.fullmatch(name):
            raise fn.fail("name", name, "1 to 64 letters, digits, _ or -")
        fn.str("description", default=None)
        fn.obj("parameters", default=None)
        names.append(name)
    choice = body.data.get("tool_choice", "auto")
    if isinstance(choice, dict):
        c = Body(choice, "tool_choice.")
        name = c.sub("function").str("name")
        if c.data.get("type") != "function" or name not in names:
            raise RequestError(
                f"tool_choice names {json_text(name)}, which is not among the tools ({', '.join(names)})",
                param="tool_choice",
            )
        return tools, names, name
    if choice not in ("auto", "none", "required"):
        raise body.fail("tool_choice", choice, '"auto", "none", "required" or {"type": "function", ...}')
    return tools, names, choice


def _response_format(body: Body) -> dict:
    f = body.sub("response_format")
    kind = f.str("type", default="text")
    if kind not in ("text", "json_object", "json_schema"):
        raise f.fail("type", kind, '"text", "json_object" or "json_schema"')
    if kind == "json_schema":
        f.sub("json_schema").obj("schema")
    return {**f.data, "type": kind}  # a response_format without a type (or null) is text


# --- /v1/completions ------------------------------------------------------------------------------


def parse_completion(data: dict, engine: Engine, defaults: Sampling, default_max: int | None) -> Generation:
    body = Body(data)
    body.str("model", default=None)
    body.only("echo", (False,), "the prompt is not echoed")
    body.only("best_of", (1,), "one choice is generated")
    body.only("suffix", ("",), "insertion (suffix) is not supported")
    options = common(body, defaults, default_max)
    prompt = body.data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        tokens = engine.tokenize(prompt)
    elif isinstance(prompt, list) and prompt and all(is_int(t) and 0 <= t < engine.n_vocab for t in prompt):
        tokens = list(prompt)
    else:
        raise body.fail(
            "prompt", prompt, f"a string, or a list of token ids below {engine.n_vocab:,} (one prompt per request)"
        )
    return Generation(prompt=tokens, **options, lora=_lora(body, engine))


# --- LoRA scales (llama-server's `lora` field and POST /lora-adapters) ---------------------------------


def _lora(body: Body, engine: Engine) -> tuple[float, ...] | None:
    """The request's `lora` list; absent, null or [] runs with the server's scales (as in llama-server)."""
    items = body.data.get("lora")
    return None if items is None or items == [] else parse_scales(items, len(engine.adapters.files), "lora")


def parse_scales(items: Any, n_adapters: int, field: str) -> tuple[float, ...]:
    """A scale per adapter from [{"id", "scale"}...] (`field` names the list in errors); an adapter left out
    gets scale 0, as llama-server's construct_lora_list gives it."""
    if not isinstance(items, list):
        raise RequestError(f"{field} is {json_text(items)}, expected {LORA_ENTRIES}", param=field)
    scales = [0.0] * n_adapters
    seen: set[int] = set()
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} is {json_text(item)}, expected an object with id and scale", param=where)
        entry = Body(item, f"{where}.")
        if not n_adapters:
            raise RequestError(f"{where}: this server has no LoRA adapters", "start it with --lora FILE", param=field)
        index = entry.int("id", lo=0, hi=n_adapters - 1)
        if index in seen:
            raise RequestError(f"{where}.id {index} is listed twice", param=f"{where}.id")
        seen.add(index)
        scale: Any = item.get("scale")
        if not ((is_int(scale) or isinstance(scale, float)) and math.isfinite(scale)):
            raise entry.fail("scale", scale, "a finite number")
        scales[index] = float(scale)
    return tuple(scales)


# --- responses ------------------------------------------------------------------------------------


def usage(result: Result) -> dict:
    completion = len(result.tokens)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": result.timings.cache_n},
    }


def finish_reason(result: Result, calls: list[dict]) -> str:
    return "tool_calls" if calls else result.finish_reason


def envelope(kind: str, request_id: str, model: str, created: int | None = None) -> dict:
    return {"id": request_id, "object": kind, "created": created or int(time.time()), "model": model}


def chat_response(result: Result, gen: Generation, request_id: str, model: str) -> dict:
    content, calls = tool_calls.split_reply(result.text) if gen.tools else (result.text, [])
    message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    return {
        **envelope("chat.completion", request_id, model),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(result, calls)}],
        "usage": usage(result),
        "timings": result.timings.as_dict(),
    }


def text_response(result: Result, request_id: str, model: str) -> dict:
    return {
        **envelope("text_completion", request_id, model),
        "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": usage(result),
        "timings": result.timings.as_dict(),
    }


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
