"""Qwen3 `<tool_call>` output into OpenAI tool calls, whole and streamed piece by piece, and the grammars
that force calls and JSON: llama.cpp's own grammar parser accepts them and they admit what they should."""

from __future__ import annotations

import json

import pytest

from marco_gguf.base.errors import RequestError
from marco_gguf.server.tools import ToolCallParser, response_grammar, split_reply, tool_grammar

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}\n</tool_call>'
# (reason, model output, content, [(name, arguments)])
REPLIES = [
    ("plain text", "Hello, world.", "Hello, world.", []),
    ("one call (Qwen3's exact format)", CALL, None, [("get_weather", '{"city": "Paris"}')]),
    (
        "two calls on separate lines",
        CALL + "\n" + CALL2,
        None,
        [("get_weather", '{"city": "Paris"}'), ("get_time", '{"zone": "CET"}')],
    ),
    ("text before a call is kept", "Let me check.\n" + CALL, "Let me check.", [("get_weather", '{"city": "Paris"}')]),
    (
        "a block that is not JSON stays text",
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\nnot json\n</tool_call>",
        [],
    ),
    (
        "JSON without a name stays text",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        [],
    ),
    ("an unfinished block (max_tokens) stays text", '<tool_call>\n{"name": "get_w', '<tool_call>\n{"name": "get_w', []),
    ("a look-alike that never opens a block", "a <tool_ca b", "a <tool_ca b", []),
    ("arguments omitted are {}", '<tool_call>{"name": "ping"}</tool_call>', None, [("ping", "{}")]),
    (
        "non-ASCII arguments are kept as they are",
        '<tool_call>{"name": "f", "arguments": {"q": "北京"}}</tool_call>',
        None,
        [("f", '{"q": "北京"}')],
    ),
]


@pytest.mark.parametrize("reason,text,content,calls", REPLIES, ids=[r[0] for r in REPLIES])
def test_split_reply(reason, text, content, calls):
    got_content, got_calls = split_reply(text)
    assert got_content == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in got_calls] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got_calls)


@pytest.mark.parametrize("reason,text,content,calls", REPLIES, ids=[r[0] for r in REPLIES])
def test_streamed_pieces_give_the_same_reply(reason, text, content, calls):
    """Fed one character at a time (every split point), the deltas add up to the whole reply."""
    parser = ToolCallParser()
    deltas = [d for ch in text for d in parser.feed(ch)] + parser.close()
    streamed = "".join(d.get("content", "") for d in deltas)
    assert (streamed.strip() if calls else streamed) == (content or "")
    firsts = [d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert [(f["index"], f["function"]["name"], f["function"]["arguments"]) for f in firsts] == [
        (i, name, "") for i, (name, _) in enumerate(calls)
    ]
    args = [
        "".join(
            d["tool_calls"][0]["function"]["arguments"]
            for d in deltas
            if "tool_calls" in d and d["tool_calls"][0]["index"] == i
        )
        for i in range(len(calls))
    ]
    assert args == [a for _, a in calls]


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _parses(lib, vocab, grammar: str) -> bool:
    sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if sampler:
        lib.llama_sampler_free(sampler)
    return bool(sampler)


GRAMMARS = [  # (reason, grammar maker)
    ("a forced call of one tool", lambda: tool_grammar([TOOL], ["get_weather"], parallel=False)),
    ("parallel calls", lambda: tool_grammar([TOOL, TOOL], ["get_weather"], parallel=True)),
    (
        "a tool without parameters",
        lambda: tool_grammar([{"type": "function", "function": {"name": "ping"}}], ["ping"], True),
    ),
    ("json_object", lambda: response_grammar({"type": "json_object"})),
    (
        "json_schema with $defs and anyOf",
        lambda: response_grammar(
            {
                "type": "json_schema",
                "json_schema": {
                    "schema": {
                        "$defs": {"n": {"type": "integer"}},
                        "type": "object",
                        "properties": {
                            "a": {"$ref": "#/$defs/n"},
                            "b": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                        },
                    }
                },
            }
        ),
    ),
]


@pytest.mark.parametrize("reason,make", GRAMMARS, ids=[g[0] for g in GRAMMARS])
def test_grammars_are_valid_gbnf_for_llamacpp(reason, make, converted):
    import llama_cpp as lib
    from checkpoints import Spec

    from marco_gguf.llama.loader import load_weights

    model = load_weights(converted(Spec(dtype="f32"), "f32").path)
    try:
        assert _parses(lib, model.vocab, make())
        assert not _parses(lib, model.vocab, "root ::= ( unclosed")  # the check can fail
    finally:
        model.close()


def test_text_response_format_has_no_grammar():
    assert response_grammar({"type": "text"}) is None


def test_a_schema_the_converter_cannot_take_is_a_400():
    with pytest.raises(
        RequestError, match=r"response_format\.json_schema\.schema cannot be turned into a grammar"
    ) as e:
        response_grammar({"type": "json_schema", "json_schema": {"schema": {"$ref": "https://example.com/s.json"}}})
    assert e.value.param == "response_format.json_schema.schema"


def test_call_grammar_text_is_qwen3s_format():
    grammar = tool_grammar([TOOL], ["get_weather"], parallel=False)
    assert json.dumps('<tool_call>\n{"name": "get_weather", "arguments": ')[1:-1] in grammar
