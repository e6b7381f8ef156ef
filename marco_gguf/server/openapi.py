"""GET /openapi.json: the server described in OpenAPI 3.1, for clients and tools to generate from and for
schemathesis to hold the server to (tests/test_openapi.py). The schemas live in openapi_schemas.py.
"""

from __future__ import annotations

from typing import Any

from marco_gguf.server.openapi_schemas import SCHEMAS, Schema, obj, ref
from marco_gguf.version import __version__

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


# one Server-Sent Event, as OpenAPI 3.1's text/event-stream schema describes it (the spec's "generic schema"
# section): `data` is a JSON chunk, or `[DONE]` last, as OpenAI's streams end
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "contentMediaType": "application/json"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


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
                        "text/event-stream": {"schema": SSE_EVENT},
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
        "/v1/chat/completions": _generate(
            "A chat reply (OpenAI's chat completions)", "ChatCompletionRequest", "ChatCompletion"
        ),
        "/v1/completions": _generate(
            "A text continuation (OpenAI's completions)", "CompletionRequest", "TextCompletion"
        ),
        "/v1/models": _get(
            "The model served",
            {
                "200": _json(
                    obj(
                        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
                        ("object", "data"),
                    ),
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
        "/lora-adapters": {
            **_get(
                "The LoRA adapters and the scales a request that sets none runs with (llama-server's shape)",
                {
                    "200": _json({"type": "array", "items": ref("LoraAdapter")}, "one per adapter"),
                    **_errors("401", "503"),
                },
            ),
            "post": {
                "summary": "Set the scales later requests that set none run with (adapters left out: 0)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("LoraScales")}}},
                "responses": {
                    "200": _json(obj({"success": {"const": True}}, ("success",)), "set"),
                    **_errors("400", "401", "413", "503"),
                },
            },
        },
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
        "/openapi.json": _get("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, auth=False),
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
