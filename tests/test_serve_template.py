"""The prompt a chat request is evaluated with equals transformers' `apply_chat_template(messages, tools=...)`
for the same messages (real Qwen3 vocabulary and template), tool-bearing conversations included."""

from __future__ import annotations

import json

import openai
import pytest
from checkpoints import Spec
from serving import live
from test_runtime import CONVERSATIONS

from marco_gguf.llama.engine import Engine, Sampling
from marco_gguf.server.openai_api import parse_chat

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


def _call(i: int, name: str, args: dict) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


ROUND_TRIP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [_call(1, "get_weather", {"city": "Paris"})]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": "22C"}'},
]
PARALLEL = [
    {"role": "user", "content": "Paris and Oslo: weather and time?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call(1, "get_weather", {"city": "Paris"}), _call(2, "get_time", {"zone": "Europe/Oslo"})],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    {"role": "assistant", "content": "Paris is 22C; it is 14:05 in Oslo."},
    {"role": "user", "content": "Und morgen? 明天呢?"},
]
PARTS = [{"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world!"}]}]
BARE = {"type": "function", "function": {"name": "get_weather", "description": None, "parameters": None}}
PLAIN_PARTS = {"role": "user", "content": "Hello, world!"}


def _plain(system, turns):
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]


# (reason, request body fields, the messages and tools transformers is given)
CASES = [
    (f"chat table: {reason}", {"messages": _plain(system, turns)}, _plain(system, turns), None)
    for reason, system, turns in CONVERSATIONS
] + [
    ("tools offered with a question", {"messages": ROUND_TRIP[:2], "tools": [WEATHER]}, ROUND_TRIP[:2], [WEATHER]),
    (
        "a tool round trip: a call with string arguments, then its result",
        {"messages": ROUND_TRIP, "tools": [WEATHER]},
        ROUND_TRIP,
        [WEATHER],
    ),
    (
        "two tools, parallel calls, grouped results, a follow-up",
        {"messages": PARALLEL, "tools": [WEATHER, TIME], "tool_choice": "auto"},
        PARALLEL,
        [WEATHER, TIME],
    ),
    (
        "tool_choice none: the tools are not shown",
        {"messages": ROUND_TRIP[:2], "tools": [WEATHER], "tool_choice": "none"},
        ROUND_TRIP[:2],
        None,
    ),
    (
        "content as text parts is their concatenation",
        {"messages": PARTS},
        [{"role": "user", "content": "Hello, world!"}],
        None,
    ),
    (
        "null content and null tool_calls from the assistant: an empty reply (as llama-server reads it)",
        {"messages": [*PARTS, {"role": "assistant", "content": None, "tool_calls": None}, *PARTS]},
        [PLAIN_PARTS, {"role": "assistant", "content": ""}, PLAIN_PARTS],
        None,
    ),
    (
        "an empty list of tool calls is no call",
        {"messages": [*PARTS, {"role": "assistant", "content": "Hi.", "tool_calls": []}, *PARTS]},
        [PLAIN_PARTS, {"role": "assistant", "content": "Hi."}, PLAIN_PARTS],
        None,
    ),
    (
        "a tool result with a null tool_call_id; a tool's null description and parameters reach the template as given",
        {"messages": [*ROUND_TRIP[:3], {**ROUND_TRIP[3], "tool_call_id": None}], "tools": [BARE]},
        [*ROUND_TRIP[:3], {"role": "tool", "content": ROUND_TRIP[3]["content"]}],
        [BARE],
    ),
    (
        "the developer role is the system role",
        {"messages": [{"role": "developer", "content": "Be terse."}, *PARTS]},
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello, world!"}],
        None,
    ),
]


@pytest.fixture(scope="module")
def qwen3(converted, checkpoint):
    from transformers import AutoTokenizer

    spec = Spec(vocab="qwen3")
    with Engine(converted(spec, "q8_0").path, ctx=1024, parallel=1, threads=2) as engine:
        yield engine, AutoTokenizer.from_pretrained(checkpoint(spec))


@pytest.mark.slow
@pytest.mark.parametrize("reason,body,messages,tools", CASES, ids=[c[0] for c in CASES])
def test_request_prompt_equals_hf_apply_chat_template(reason, body, messages, tools, qwen3):
    engine, hf = qwen3
    expected = hf.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert parse_chat(body, engine, Sampling(), 1).prompt == list(expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    "reason,turns",
    [
        ("a reply begun by the client is continued from its last word", ["Name a colour.", "The colour is"]),
        ("an empty prefill continues from the start of the reply", ["Hi", ""]),
        ("a prefill after a full exchange", ["Hi", "Hello!", "Count to three.", "One, two,"]),
    ],
)
def test_a_conversation_ending_with_the_assistant_is_continued_as_transformers_does(reason, turns, qwen3):
    engine, hf = qwen3
    messages = _plain(None, turns)
    expected = hf.apply_chat_template(
        messages, continue_final_message=True, add_generation_prompt=False, tokenize=True, return_dict=True
    )["input_ids"]
    assert parse_chat({"messages": messages}, engine, Sampling(), 1).prompt == list(expected)


@pytest.mark.slow
def test_usage_counts_the_same_prompt_over_http(qwen3):
    engine, hf = qwen3
    expected = hf.apply_chat_template(
        PARALLEL, tools=[WEATHER, TIME], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    with live(engine) as s:
        r = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="m", messages=PARALLEL, tools=[WEATHER, TIME], max_tokens=1
        )
    assert r.usage.prompt_tokens == len(expected)
