"""GET /openapi.json: the server described in OpenAPI 3.1 (JSON Schema 2020-12), for clients and tools to
generate from and for schemathesis to hold the server to (tests/test_openapi.py).

Request schemas say what openai_api.py checks, field by field (types, ranges, the values supported); they
admit everything the server accepts, so a request they refuse is refused by the server too. What JSON Schema
cannot say (a tool_choice naming one of the tools, a prompt that fits the context, stream_options only with
stream, token ids below the vocabulary size) is answered 400 with OpenAI's error JSON, as documented.
"""

from __future__ import annotations

from typing import Any

from marco_gguf.base.jsonfields import INT32_MAX
from marco_gguf.server.openai_api import INT64, MAX_STOP, ROLES
from marco_gguf.version import __version__

Schema = dict[str, Any]
NULL: Schema = {"type": "null"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, NULL]}


def number(lo: float, hi: float, text: str) -> Schema:
    return {"type": ["number", "null"], "minimum": lo, "maximum": hi, "description": text}


def integer(lo: int, hi: int, text: str) -> Schema:
    return {"type": ["integer", "null"], "minimum": lo, "maximum": hi, "description": text}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), text: str = "") -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if text:
        out["description"] = text
    return out


TEXT_PART = obj({"type": {"const": "text"}, "text": {"type": "string"}}, ("type", "text"))
CONTENT: Schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}]}
TOOL_CALL = obj(
    {
        "id": {"type": ["string", "null"]},
        "type": {"const": "function"},
        "function": obj({"name": {"type": "string"}, "arguments": {"type": "string"}}, ("name", "arguments")),
    },
    ("function",),
)
MESSAGE: Schema = {
    "oneOf": [
        obj(
            {"role": {"enum": ["system", "developer", "user"]}, "content": CONTENT},
            ("role", "content"),
            "developer is read as system",
        ),
        obj(
            {
                "role": {"const": "assistant"},
                "content": {"anyOf": [*CONTENT["anyOf"], NULL]},
                "tool_calls": nullable({"type": "array", "items": TOOL_CALL}),
            },
            ("role",),
            "null content is read as empty (as llama-server reads it); a conversation ending with an assistant "
            "message without tool calls is continued from its text (llama-server's prefill)",
        ),
        obj(
            {"role": {"const": "tool"}, "content": CONTENT, "tool_call_id": {"type": ["string", "null"]}},
            ("role", "content"),
        ),
    ]
}
assert set(ROLES) == {"system", "developer", "user", "assistant", "tool"}  # the schema above names each role
TOOL = obj(
    {
        "type": {"const": "function"},
        "function": obj(
            {
                "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                "description": {"type": ["string", "null"]},
                "parameters": nullable({"type": "object", "description": "a JSON schema for the arguments"}),
            },
            ("name",),
        ),
    },
    ("type", "function"),
)
RESPONSE_FORMAT: Schema = {
    "anyOf": [
        obj({"type": {"enum": ["text", "json_object", None]}}),
        obj(
            {
                "type": {"const": "json_schema"},
                "json_schema": obj({"schema": {"type": "object"}}, ("schema",)),
            },
            ("type", "json_schema"),
        ),
        NULL,
    ]
}
COMMON: dict[str, Schema] = {
    "model": {"type": ["string", "null"], "description": "any name: the one model served answers"},
    "temperature": number(0, 2, "0 is greedy"),
    "top_p": number(0, 1, ""),
    "top_k": integer(0, INT32_MAX, "0 keeps every token"),
    "min_p": number(0, 1, ""),
    "repeat_penalty": number(0, 10, "llama-server's extension; 1 is off"),
    "presence_penalty": number(-2, 2, ""),
    "frequency_penalty": number(-2, 2, ""),
    "seed": integer(-INT64 - 1, INT64, "its low 32 bits seed llama.cpp's sampler"),
    "max_tokens": integer(1, INT32_MAX, "default: the server's --max-tokens"),
    "max_completion_tokens": integer(1, INT32_MAX, "wins over max_tokens"),
    "stop": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}, NULL]
    },
    "stream": {"type": ["boolean", "null"]},
    "stream_options": nullable(obj({"include_usage": {"type": ["boolean", "null"]}}, text="only with stream")),
    "n": {"enum": [1, None], "description": "one choice per request"},
    "logprobs": {"enum": [False, None]},
    "top_logprobs": {"enum": [0, None]},
}
CHAT_REQUEST = obj(
    {
        **COMMON,
        "messages": {"type": "array", "items": ref("Message"), "minItems": 1},
        "tools": nullable({"type": "array", "items": ref("Tool")}),
        "tool_choice": {
            "anyOf": [
                {"enum": ["auto", "none", "required"]},
                obj(
                    {"type": {"const": "function"}, "function": obj({"name": {"type": "string"}}, ("name",))},
                    ("type", "function"),
                    "one of the tools, by name",
                ),
                NULL,
            ]
        },
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "response_format": ref("ResponseFormat"),
    },
    ("messages",),
)
COMPLETION_REQUEST = obj(
    {
        **COMMON,
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            ],
            "description": "a string, or token ids below the vocabulary size (one prompt per request)",
        },
        "echo": {"enum": [False, None]},
        "best_of": {"enum": [1, None]},
        "suffix": {"enum": ["", None]},
    },
    ("prompt",),
)
TIMINGS = obj(
    {
        k: {"type": "integer" if k.endswith("_n") else "number"}
        for k in (
            "cache_n",
            "prompt_n",
            "prompt_ms",
            "predicted_n",
            "predicted_ms",
            "prompt_per_token_ms",
            "prompt_per_second",
            "predicted_per_token_ms",
            "predicted_per_second",
        )
    },
    ("prompt_n", "predicted_n", "prompt_per_second", "predicted_per_second"),
)
USAGE = obj(
    {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": obj({"cached_tokens": {"type": "integer"}}),
    },
    ("prompt_tokens", "completion_tokens", "total_tokens"),
)
ENVELOPE = {"id": {"type": "string"}, "created": {"type": "integer"}, "model": {"type": "string"}}
FINISH = {"enum": ["stop", "length", "tool_calls"]}
CHAT_COMPLETION = obj(
    {
        **ENVELOPE,
        "object": {"const": "chat.completion"},
        "choices": {
            "type": "array",
            "items": obj(
                {
                    "index": {"type": "integer"},
                    "message": obj(
                        {
                            "role": {"const": "assistant"},
                            "content": {"type": ["string", "null"]},
                            "tool_calls": {"type": "array", "items": TOOL_CALL},
                        },
                        ("role", "content"),
                    ),
                    "logprobs": NULL,
                    "finish_reason": FINISH,
                },
                ("index", "message", "finish_reason"),
            ),
        },
        "usage": ref("Usage"),
        "timings": ref("Timings"),
    },
    ("id", "object", "created", "model", "choices", "usage"),
)
TEXT_COMPLETION = obj(
    {
        **ENVELOPE,
        "object": {"const": "text_completion"},
        "choices": {
            "type": "array",
            "items": obj(
                {"index": {"type": "integer"}, "text": {"type": "string"}, "logprobs": NULL, "finish_reason": FINISH},
                ("index", "text", "finish_reason"),
            ),
        },
        "usage": ref("Usage"),
        "timings": ref("Timings"),
    },
    ("id", "object", "created", "model", "choices", "usage"),
)
ERROR = obj(
    {
        "error": obj(
            {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            ("message", "type", "param", "code"),
        )
    },
    ("error",),
    "OpenAI's error object",
)
MODEL = obj(
    {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"}, "owned_by": {"type": "string"}},
    ("id", "object", "created", "owned_by"),
)
PARAMS = obj(
    {
        "temperature": {"type": "number"},
        "top_k": {"type": "integer"},
        "top_p": {"type": "number"},
        "min_p": {"type": "number"},
        "repeat_penalty": {"type": "number"},
        "presence_penalty": {"type": "number"},
        "frequency_penalty": {"type": "number"},
        "seed": {"type": ["integer", "null"], "description": "null: a random seed per request"},
        "max_tokens": {"type": "integer", "description": "-1: to the end of the context"},
        "n_predict": {"type": "integer"},
        "stream": {"type": "boolean"},
    },
    ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed", "max_tokens"),
)
GROUP = obj(
    {
        "tensors": {"type": "integer"},
        "parameters": {"type": "integer"},
        "bytes": {"type": "integer"},
        "bits_per_weight": {"type": "number"},
        "types": {"type": "array", "items": {"type": "string"}},
    },
    ("tensors", "parameters", "bytes", "bits_per_weight", "types"),
)
MODEL_FACTS = obj(
    {
        "id": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "file": {"type": "string"},
        "size": {"type": "integer"},
        "architecture": {"type": "string"},
        "file_type": {"type": ["string", "null"]},
        "parameters": {"type": "integer"},
        "active_parameters": {"type": "integer"},
        "bits_per_weight": {"type": "number"},
        "bytes_per_token": {"type": "integer"},
        "experts": obj({"count": {"type": ["integer", "null"]}, "used": {"type": ["integer", "null"]}}),
        "layers": {"type": ["integer", "null"]},
        "context_length": {"type": ["integer", "null"]},
        "vocab_size": {"type": ["integer", "null"]},
        "groups": {"type": "object", "additionalProperties": GROUP},
        "sampling_in_file": {"type": "object", "description": "the GGUF's general.sampling.*, by field"},
    },
    ("id", "file", "size", "parameters", "active_parameters", "bytes_per_token", "experts", "groups"),
)
PROPS = obj(
    {
        "default_generation_settings": obj({"n_ctx": {"type": "integer"}, "params": PARAMS}, ("n_ctx", "params")),
        "total_slots": {"type": "integer"},
        "model_alias": {"type": "string"},
        "model_path": {"type": "string"},
        "model_ftype": {"type": ["string", "null"]},
        "modalities": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "chat_template": {"type": "string"},
        "chat_template_from_gguf": {"type": "boolean", "description": "false: the GGUF has none, ChatML is used"},
        "bos_token": {"type": "string"},
        "eos_token": {"type": "string"},
        "build_info": {"type": "string"},
        "is_sleeping": {"type": "boolean"},
        "model": MODEL_FACTS,
    },
    ("default_generation_settings", "total_slots", "model_alias", "chat_template", "model"),
    "llama-server's /props, plus the model's facts",
)
SLOT = obj(
    {
        "id": {"type": "integer"},
        "n_ctx": {"type": "integer"},
        "speculative": {"type": "boolean"},
        "is_processing": {"type": "boolean"},
        "n_cache_tokens": {"type": "integer"},
        "id_task": {"type": "integer"},
        "n_prompt_tokens": {"type": "integer"},
        "n_prompt_tokens_cache": {"type": "integer"},
        "next_token": {
            "type": "array",
            "items": obj(
                {"has_next_token": {"type": "boolean"}, "n_remain": {"type": "integer"}, "n_decoded": {"type": "integer"}}
            ),
        },
    },
    ("id", "n_ctx", "is_processing"),
)
SCHEMAS = {
    "Message": MESSAGE,
    "Tool": TOOL,
    "ResponseFormat": RESPONSE_FORMAT,
    "ChatCompletionRequest": CHAT_REQUEST,
    "CompletionRequest": COMPLETION_REQUEST,
    "ChatCompletion": CHAT_COMPLETION,
    "TextCompletion": TEXT_COMPLETION,
    "Usage": USAGE,
    "Timings": TIMINGS,
    "Error": ERROR,
    "Model": MODEL,
    "Props": PROPS,
    "Slot": SLOT,
}
ERRORS = {
    "400": "the body is not JSON, or a field has the wrong type, range or an unsupported value (named in param)",
    "401": "no API key or a wrong one (the server was started with --api-key)",
    "404": "no such path or model",
    "413": "the body is over 4 MiB",
    "500": "llama.cpp failed while generating",
    "503": "the model is loading, the queue is full, or the server is stopping",
}


def _json(schema: Schema, text: str) -> dict:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict:
    return {c: _json(ref("Error"), ERRORS[c]) for c in codes}


def _generate(summary: str, request: str, response: str) -> dict:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(request)}}},
            "responses": {
                "200": {
                    "description": "the reply; with stream: Server-Sent Events (data: {chunk} ... data: [DONE])",
                    "content": {
                        "application/json": {"schema": ref(response)},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors("400", "401", "413", "500", "503"),
            },
        }
    }


def _get(summary: str, responses: dict, *, auth: bool = True) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if not auth:
        op["security"] = []
    return {"get": op}


def document(api_key: bool) -> dict:
    """The OpenAPI document; `api_key`: the server was started with one (then every path but the page, its
    files, /health and this document asks for it)."""
    text = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    paths = {
        "/v1/chat/completions": _generate("A chat reply (OpenAI's chat completions)", "ChatCompletionRequest", "ChatCompletion"),
        "/v1/completions": _generate("A text continuation (OpenAI's completions)", "CompletionRequest", "TextCompletion"),
        "/v1/models": _get(
            "The model served",
            {
                "200": _json(
                    obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}, ("object", "data")),
                    "a list of one",
                ),
                **_errors("401"),
            },
        ),
        "/v1/models/{model}": {
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            **_get("One model, by id", {"200": _json(ref("Model"), "the model"), **_errors("401", "404")}),
        },
        "/props": _get(
            "Default generation settings, slots and the model's facts (llama-server's shape)",
            {"200": _json(ref("Props"), "the server's properties"), **_errors("401", "503")},
        ),
        "/slots": _get(
            "Each generation slot now (llama-server's shape)",
            {"200": _json({"type": "array", "items": ref("Slot")}, "one entry per slot"), **_errors("401", "503")},
        ),
        "/health": _get(
            "Ready or not",
            {"200": _json(obj({"status": {"const": "ok"}}, ("status",)), "ready"), **_errors("503")},
            auth=False,
        ),
        "/metrics": _get(
            "Prometheus counters and gauges",
            {"200": {**text, "description": "Prometheus text format 0.0.4"}, **_errors("401", "503")},
        ),
        "/": _get(
            "The chat page",
            {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            auth=False,
        ),
        "/static/{file}": {
            "parameters": [{"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}],
            **_get(
                "The chat page's scripts, styles and fonts",
                {"200": {"description": "the file", "content": {"*/*": {}}}, **_errors("404")},
                auth=False,
            ),
        },
        "/openapi.json": _get(
            "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, auth=False
        ),
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "marco-gguf serve",
            "version": __version__,
            "description": "OpenAI-compatible chat and text completions over a Marco GGUF, with llama-server's "
            "/props, /slots and /metrics",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if api_key:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
