"""The schemas of /openapi.json (OpenAPI 3.1, JSON Schema 2020-12): requests as openai_api.py checks them, field
by field (types, ranges, the values supported), and the responses the server writes. They admit everything the
server accepts, so a request they refuse is refused by the server too. What JSON Schema cannot say (a
tool_choice naming one of the tools, a prompt that fits the context, stream_options only with stream, token
ids below the vocabulary size) is answered 400 with OpenAI's error JSON, as documented (openapi.py).
"""

from __future__ import annotations

from typing import Any

from marco_gguf.base.jsonfields import INT32_MAX
from marco_gguf.server.openai_api import INT64, MAX_STOP, ROLES

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
LORA_SCALES: Schema = {
    "type": "array",
    "items": obj({"id": {"type": "integer", "minimum": 0}, "scale": {"type": "number"}}, ("id", "scale")),
    "description": "a scale per LoRA adapter by id (GET /lora-adapters); an adapter left out gets scale 0",
}
LORA_ADAPTER = obj(
    {"id": {"type": "integer"}, "path": {"type": "string"}, "scale": {"type": "number"}},
    ("id", "path", "scale"),
    "an adapter serve --lora loaded, and the scale a request that sets none runs with",
)
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
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}, NULL]},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": nullable(obj({"include_usage": {"type": ["boolean", "null"]}}, text="only with stream")),
    "n": {"enum": [1, None], "description": "one choice per request"},
    "logprobs": {"enum": [False, None]},
    "top_logprobs": {"enum": [0, None]},
    "lora": {**nullable(LORA_SCALES), "description": "llama-server's: this request's LoRA scales ([]: the server's)"},
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
    {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
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
        "lora_adapters": {"type": "array", "items": ref("LoraAdapter")},
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
                {
                    "has_next_token": {"type": "boolean"},
                    "n_remain": {"type": "integer"},
                    "n_decoded": {"type": "integer"},
                }
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
    "LoraScales": LORA_SCALES,
    "LoraAdapter": LORA_ADAPTER,
}
