"""The HTTP server through the real `openai` SDK and a plain HTTP client: answers equal what the engine
generates for the same tokens, streams are framed as OpenAI's, tool calls and JSON output are
well-formed and valid, errors are the SDK's typed exceptions."""

from __future__ import annotations

import json
import threading

import jsonschema
import openai
import pytest
from checkpoints import Spec
from serving import LiveServer, live, open_stream, request, sse_events

from marco_gguf.llama.engine import Engine, Sampling
from marco_gguf.server import ServerState

GREEDY = Sampling(temperature=0.0)
HI = [{"role": "user", "content": "Hello there, how are you?"}]
CITY = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "days": {"enum": [1, 2, 3]}},
    "required": ["city", "days"],
    "additionalProperties": False,
}  # bounded: every output ends
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather forecast", "parameters": CITY},
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(Spec(dtype="f32"), "f32").path, ctx=2048, parallel=4, threads=2) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    with live(engine) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def alone(engine: Engine, messages: list[dict], n: int, tools=None) -> str:
    prompt = engine.tokenize(engine.template.render(messages, tools=tools))
    return engine.submit(prompt, max_tokens=n, sampling=GREEDY).wait().text


def test_chat_equals_the_engine_and_reports_usage(client, engine):
    expected = alone(engine, HI, 12)
    r = client.chat.completions.create(model="any", messages=HI, max_tokens=12, temperature=0)
    prompt = engine.tokenize(engine.template.render(HI))
    assert r.choices[0].message.content == expected
    assert (r.choices[0].finish_reason, r.object, r.choices[0].message.role) == (
        "length",
        "chat.completion",
        "assistant",
    )
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        len(prompt),
        12,
        len(prompt) + 12,
    )
    assert r.usage.prompt_tokens_details.cached_tokens >= len(prompt) - 1  # the engine's run above left it cached
    timings = r.model_extra["timings"]
    assert timings["predicted_n"] == 12 and timings["predicted_per_second"] > 0


def test_stream_deltas_add_up_to_the_whole_reply(client, engine):
    chunks = list(
        client.chat.completions.create(
            model="any", messages=HI, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone(engine, HI, 12)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_completions_and_stream(client, engine):
    prompt = "The capital of France is"
    expected = engine.submit(engine.tokenize(prompt), max_tokens=10, sampling=GREEDY).wait().text
    r = client.completions.create(model="any", prompt=prompt, max_tokens=10, temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == (expected, "length", 10)
    streamed = client.completions.create(model="any", prompt=prompt, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_models_list_and_retrieve(client, engine):
    assert [m.id for m in client.models.list()] == [engine.info.path.name]
    assert client.models.retrieve(engine.info.path.name).owned_by == "marco-gguf"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4o")


def test_raw_sse_framing(server):
    conn, r = open_stream(server.url, {"messages": HI, "max_tokens": 5, "stream_options": {"include_usage": True}})
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    events = list(sse_events(r))
    conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 2) + ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and "timings" in chunks[-2]


def test_concurrent_clients_get_what_each_gets_alone(client, engine):
    """Greedy on an F32 GGUF: 3 clients at once (one batched llama_decode per step) get their solo text."""
    conversations = [[{"role": "user", "content": q}] for q in ("What is MoE?", "Name three rivers.", "def f(x):")]
    solo = [alone(engine, m, 16) for m in conversations]
    got: list = [None] * 3
    barrier = threading.Barrier(3)

    def ask(i: int) -> None:
        barrier.wait(10)
        got[i] = (
            client.chat.completions.create(model="any", messages=conversations[i], max_tokens=16, temperature=0)
            .choices[0]
            .message.content
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == solo


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"]
)
def test_tool_round_trip(client, choice):
    """A forced call is a valid call of the tool (grammar); the tool's answer goes back and the model replies."""
    messages = [{"role": "user", "content": "Weather in Paris for two days?"}]
    r = client.chat.completions.create(
        model="any",
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=0,
    )
    message, reason = r.choices[0].message, r.choices[0].finish_reason
    assert reason == "tool_calls" and message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    schema = {"get_weather": CITY, "get_time": TIME["function"]["parameters"]}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    assert call.id.startswith("call_") and call.type == "function"
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'},
    ]
    answer = client.chat.completions.create(
        model="any", messages=messages, tools=[WEATHER, TIME], tool_choice="none", max_tokens=8, temperature=0
    )
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.content


def test_streamed_tool_call_is_shaped_like_openai(client):
    """First delta: index, id, type, function.name (arguments ""); then the arguments; the SDK's accumulation
    gives the non-streamed call."""
    kwargs = dict(
        model="any",
        messages=[{"role": "user", "content": "Time in Oslo?"}],
        tools=[TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=0,
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    deltas = [
        c.choices[0].delta.tool_calls
        for c in client.chat.completions.create(stream=True, **kwargs)
        if c.choices and c.choices[0].delta.tool_calls
    ]
    first, rest = deltas[0][0], [d[0] for d in deltas[1:]]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", "get_time", "")
    assert first.id and all(d.id is None and d.index == 0 for d in rest)
    assert "".join(d.function.arguments for d in rest) == whole.function.arguments


def test_json_schema_output_parses_and_validates(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "ok": {"type": "boolean"},
            "n": {"type": "integer"},
        },
        "required": ["name", "ok", "n"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="any",
        messages=HI,
        max_tokens=300,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


SDK_ERRORS = [  # (reason, request options, SDK exception, message fragment)
    ("n > 1 is refused", dict(n=2), openai.BadRequestError, "n = 1"),
    ("a wrong type names the field", dict(temperature="hot"), openai.BadRequestError, 'temperature is "hot"'),
    ("out of range", dict(top_p=1.5), openai.BadRequestError, "top_p is 1.5, expected a finite number from 0 up to 1"),
    (
        "images are refused",
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        openai.BadRequestError,
        "only text parts are supported",
    ),
    (
        "a named tool that is not given",
        dict(tools=[TIME], tool_choice={"type": "function", "function": {"name": "nope"}}),
        openai.BadRequestError,
        '"nope", which is not among the tools',
    ),
    (
        "a prompt longer than the context, with the numbers",
        dict(messages=[{"role": "user", "content": "hi " * 3000}]),
        openai.BadRequestError,
        r"the prompt is 6,\d{3} tokens, the context holds 2,048 \(--ctx\)",
    ),
]


@pytest.mark.parametrize("reason,options,error,fragment", SDK_ERRORS, ids=[e[0] for e in SDK_ERRORS])
def test_errors_are_the_sdks_typed_exceptions(reason, options, error, fragment, client):
    with pytest.raises(error, match=fragment) as e:
        client.chat.completions.create(**{"model": "any", "messages": HI, "max_tokens": 2, **options})
    assert e.value.body["message"] and e.value.body["type"] == "invalid_request_error"


def test_api_key_is_required_except_for_health(engine):
    with live(engine, api_key="s3cret") as s:
        with pytest.raises(openai.AuthenticationError, match="a wrong API key"):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
        status, _, body = request(s.url, "GET", "/v1/models")
        assert (status, json.loads(body)["error"]["code"]) == (401, "invalid_api_key")
        assert json.loads(body)["error"]["message"].startswith("no API key")
        assert request(s.url, "GET", "/health")[0] == 200
        assert request(s.url, "GET", "/metrics")[0] == 401
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="m", messages=HI, max_tokens=2).usage.completion_tokens == 2


def test_cors_only_when_asked(engine, server):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    with live(engine, cors="http://app.example") as s:
        status, headers, _ = request(s.url, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    status, headers, _ = request(server.url, "GET", "/v1/models", headers={"Origin": "http://app.example"})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_health_is_503_while_loading(engine):
    loaded = threading.Event()
    state = ServerState(engine.info.path.name, load=lambda: (loaded.wait(30), engine)[1])
    with LiveServer(state) as s:
        status, _, body = request(s.url, "GET", "/health")
        assert (status, json.loads(body)["error"]["message"]) == (503, "the model is loading")
        assert request(s.url, "POST", "/v1/completions", {"prompt": "hi"})[0] == 503
        loaded.set()
        for _ in range(500):
            if request(s.url, "GET", "/health")[0] == 200:
                break
        assert json.loads(request(s.url, "GET", "/health")[2]) == {"status": "ok"}


def test_metrics_are_prometheus_text(server, engine):
    status, headers, body = request(server.url, "GET", "/metrics")
    values = {
        line.split()[0]: float(line.split()[1]) for line in body.decode().splitlines() if not line.startswith("#")
    }
    m = engine.metrics()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert values["marco_gguf_requests_total"] == m.requests_total > 0
    assert values["marco_gguf_slots"] == 4 and values["marco_gguf_requests_processing"] == 0
    assert values["marco_gguf_tokens_predicted_total"] == m.tokens_predicted_total
    assert 0 < values["marco_gguf_kv_cache_usage_ratio"] <= 1


class BrokenEngine:
    """A stand-in whose tokenizer fails as a bug would: the answer must still be JSON, without a traceback."""

    info = None

    def __getattr__(self, name):
        raise RuntimeError("something internal broke")


def test_an_unexpected_error_is_a_500_json_without_traceback():
    with LiveServer(ServerState("broken", engine=BrokenEngine())) as s:
        status, _headers, body = request(s.url, "POST", "/v1/completions", {"prompt": "hi"})
    error = json.loads(body)["error"]
    assert (status, error["type"]) == (500, "server_error") and "Traceback" not in body.decode()
    assert error["message"] == "internal error (RuntimeError); the server log has the details"
