"""serve's 400 messages show the values a client sent as it sent them, in JSON (issue 26, item 6): `null`, `true`,
`"text"`, `{"city": "Paris"}`, never Python's None, True, 'text' or {'city': 'Paris'}. Each case is a request
body sent over HTTP and the exact message and `param` of the 400 it gets."""

from __future__ import annotations

import json

import pytest
from checkpoints import Spec
from serving import live, request

from marco_gguf.base.jsonfields import json_text
from marco_gguf.llama.engine import Engine

HI = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}

# (reason, request body, the 400's exact message, its param)
CASES = [
    (
        "a user message's content null: null, not None",
        {"messages": [{"role": "user", "content": None}]},
        "messages[0].content is null, expected a string or a list of text parts",
        "messages[0].content",
    ),
    (
        "tool call arguments as an object, not the JSON string OpenAI's API takes: the object as JSON",
        {"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [CALL]}]},
        'messages[1].tool_calls[0].function.arguments is {"city": "Paris"}, expected a string',
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "a message that is not an object: the list as JSON",
        {"messages": [["user", "hi"]]},
        'messages[0] is ["user", "hi"], expected an object with role and content',
        "messages[0]",
    ),
    (
        "a string in double quotes",
        {"messages": HI, "temperature": "hot"},
        'temperature is "hot", expected a finite number from 0 up to 2',
        "temperature",
    ),
    (
        "a boolean as true, not True",
        {"messages": HI, "max_tokens": True},
        "max_tokens is true, expected an integer from 1 to 2,147,483,647",
        "max_tokens",
    ),
    ("messages null", {"messages": None}, "messages is null, expected a non-empty list", "messages"),
    ("an unsupported value: n", {"messages": HI, "n": 2}, "n 2 is not supported: this server generates one choice per request (n = 1)", "n"),
    (
        "an unsupported value: logprobs true",
        {"messages": HI, "logprobs": True},
        "logprobs true is not supported: log probabilities are not returned",
        "logprobs",
    ),
    (
        "an image part: its type in double quotes",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        'messages[0].content[0] is a "image_url" part: only text parts are supported (Marco reads text only)',
        "messages[0].content[0]",
    ),
    (
        "a part that is not an object: its JSON kind",
        {"messages": [{"role": "user", "content": ["hi"]}]},
        "messages[0].content[0] is a string: only text parts are supported (Marco reads text only)",
        "messages[0].content[0]",
    ),
    (
        "a named tool not among the tools",
        {"messages": HI, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        'tool_choice names "nope", which is not among the tools (get_weather)',
        "tool_choice",
    ),
    (
        "an unknown tool_choice: the expected values in JSON too",
        {"messages": HI, "tools": [TOOL], "tool_choice": "any"},
        'tool_choice is "any", expected "auto", "none", "required" or {"type": "function", ...}',
        "tool_choice",
    ),
    (
        "a tool that is not a function",
        {"messages": HI, "tools": [{"type": None}]},
        'tools[0].type is null, expected "function"',
        "tools[0].type",
    ),
    (
        "a response format of an unknown type",
        {"messages": HI, "response_format": {"type": "xml"}},
        'response_format.type is "xml", expected "text", "json_object" or "json_schema"',
        "response_format.type",
    ),
    (
        "a long value is cut at 60 characters",
        {"messages": HI, "stop": {"text": "a" * 100}},
        'stop is {"text": "' + "a" * 47 + '..., expected a string or a list of at most 16 strings',
        "stop",
    ),
    (
        "non-ASCII text as sent, not escaped",
        {"messages": [{"role": "Ärzt", "content": "hi"}]},
        'messages[0].role is "Ärzt", expected system or developer or user or assistant or tool',
        "messages[0].role",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(converted):
    with Engine(converted(Spec(dtype="f32"), "f32").path, ctx=512, parallel=1, threads=2) as e, live(e) as s:
        yield s


@pytest.mark.parametrize("reason,body,message,param", CASES, ids=[c[0] for c in CASES])
def test_400_messages_show_json_values(reason, body, message, param, server):
    status, _, raw = request(server.url, "POST", "/v1/chat/completions", {"max_tokens": 1, **body})
    error = json.loads(raw)["error"]
    assert (status, error["message"], error["param"], error["type"]) == (400, message, param, "invalid_request_error")


# (reason, value, its text)
TEXTS = [
    ("JSON's null, booleans and strings", [None, True, "a"], '[null, true, "a"]'),
    ("exactly 60 characters are kept whole", "x" * 58, '"' + "x" * 58 + '"'),
    ("61 are cut to 57 and ...", "x" * 59, '"' + "x" * 56 + "..."),
    ("a value JSON cannot hold (a caller's own) falls back to repr", {1, 2}, "{1, 2}"),
]


@pytest.mark.parametrize("reason,value,text", TEXTS, ids=[t[0] for t in TEXTS])
def test_json_text(reason, value, text):
    assert json_text(value) == text
