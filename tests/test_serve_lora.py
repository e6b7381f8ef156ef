"""serve's per-request LoRA, as llama-server has it: GET/POST /lora-adapters and a completion's `lora` list,
on the F32 base with two GGUF adapters made from PEFT adapters (tests/adapters.py). Greedy, so a request's
text is exact: a request with its adapters says what it says alone, whatever runs beside it."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import openai
import pytest
from adapters import EXPERTS, Adapter, make_adapter
from checkpoints import Spec
from serving import TIMEOUT_S, live, request

from marco_gguf.gguf_io.lora_gguf import write_lora_gguf
from marco_gguf.llama.engine import Engine
from marco_gguf.llama.lora import LoraFile

BASE = Spec(seed=3)
ATTENTION = Adapter()
EXPERT = Adapter(("q_proj", "gate"), EXPERTS, seed=1)
PROMPT = "Hello there"
ASK = {"prompt": PROMPT, "temperature": 0, "max_tokens": 16}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, checkpoint):
    base, out = checkpoint(BASE), tmp_path_factory.mktemp("serve-lora")
    return [
        write_lora_gguf(make_adapter(base, out / f"peft-{i}", a), base=base, outfile=out / f"a{i}.gguf").path
        for i, a in enumerate((ATTENTION, EXPERT))
    ]


@pytest.fixture(scope="module")
def engine(converted, adapters):
    loras = [LoraFile(adapters[0]), LoraFile(adapters[1], 0.5)]
    with Engine(converted(BASE, "f32").path, ctx=512, parallel=3, threads=2, loras=loras) as e:
        yield e


@pytest.fixture(scope="module")
def base_engine(converted):
    with Engine(converted(BASE, "f32").path, ctx=512, parallel=1, threads=2) as e:
        yield e


def greedy(engine: Engine, lora=None, prompt: str = PROMPT) -> str:
    sampling = replace(engine.sampling, temperature=0.0)
    return engine.submit(engine.tokenize(prompt), max_tokens=16, sampling=sampling, lora=lora).wait().text


def post(url: str, path: str, body) -> tuple[int, dict]:
    status, _, raw = request(url, "POST", path, json.dumps(body).encode())
    return status, json.loads(raw)


def test_engine_requests_with_other_scales_side_by_side_say_what_they_say_alone(engine, base_engine):
    """Three requests in three slots at once, each with its own scales, then each alone: the same text; scale 0
    on every adapter is the base model (an engine without adapters)."""
    sets = [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0)]
    alone = [greedy(engine, s) for s in sets]
    assert alone[2] == greedy(base_engine)
    assert len(set(alone)) == 3, "each adapter changes the reply"
    sampling = replace(engine.sampling, temperature=0.0)
    jobs = [engine.submit(engine.tokenize(PROMPT), max_tokens=16, sampling=sampling, lora=s) for s in sets]
    assert [j.wait().text for j in jobs] == alone
    assert greedy(engine) == greedy(engine, (1.0, 0.5)), "no lora: the command line's scales"


def test_a_cache_made_under_other_scales_is_not_reused(converted, adapters, engine):
    """One slot, the same prompt again: its cached prefix is reused under the same scales, and not under others
    (whose reply is then what it is on a fresh slot)."""
    loras = [LoraFile(adapters[0]), LoraFile(adapters[1])]
    with Engine(converted(BASE, "f32").path, ctx=512, parallel=1, threads=2, loras=loras) as one:
        sampling = replace(one.sampling, temperature=0.0)
        prompt = one.tokenize(PROMPT)

        def run(scales):
            return one.submit(prompt, max_tokens=16, sampling=sampling, lora=scales).wait()

        first = run((1.0, 0.0))
        again = run((1.0, 0.0))
        other = run((0.0, 1.0))
    assert again.timings.cache_n == len(prompt) - 1 and again.text == first.text
    assert other.timings.cache_n == 0 and other.text == greedy(engine, (0.0, 1.0))


def test_concurrent_http_requests_with_other_lora_lists_each_get_what_they_get_alone(engine):
    lists = [[{"id": 0, "scale": 1.0}], [{"id": 1, "scale": 1.0}], [{"id": 0, "scale": 0.5}, {"id": 1, "scale": 0.5}]]
    with live(engine) as s:
        alone = []
        for lora in lists:
            status, body = post(s.url, "/v1/completions", {**ASK, "lora": lora})
            assert status == 200, body
            alone.append(body["choices"][0]["text"])
        results: dict[int, str] = {}

        def ask(i: int) -> None:
            results[i] = post(s.url, "/v1/completions", {**ASK, "lora": lists[i]})[1]["choices"][0]["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(lists))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S)
        assert [results[i] for i in range(len(lists))] == alone
        chat = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 8}
        status, off = post(s.url, "/v1/chat/completions", {**chat, "lora": [{"id": 0, "scale": 0}]})
        assert status == 200, off
        expected = greedy_chat(engine, (0.0, 0.0))
        assert off["choices"][0]["message"]["content"] == expected, "every adapter at 0: the base"
    assert len(set(alone)) == 3


def greedy_chat(engine: Engine, lora) -> str:
    text = engine.template.render([{"role": "user", "content": PROMPT}], tools=None, continue_final=False)
    sampling = replace(engine.sampling, temperature=0.0)
    return engine.submit(engine.tokenize(text), max_tokens=8, sampling=sampling, lora=lora).wait().text


def test_the_openai_client_sends_lora_through_extra_body(engine):
    with live(engine) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
        reply = client.completions.create(
            model="any", prompt=PROMPT, temperature=0, max_tokens=16, extra_body={"lora": [{"id": 1, "scale": 1.0}]}
        )
    assert reply.choices[0].text == greedy(engine, (0.0, 1.0))


def test_lora_adapters_round_trip_and_props(engine, adapters):
    with live(engine) as s:
        listed = [{"id": 0, "path": str(adapters[0]), "scale": 1.0}, {"id": 1, "path": str(adapters[1]), "scale": 0.5}]
        assert json.loads(request(s.url, "GET", "/lora-adapters")[2]) == listed
        assert json.loads(request(s.url, "GET", "/props")[2])["lora_adapters"] == listed
        try:
            assert post(s.url, "/lora-adapters", [{"id": 1, "scale": 0.25}]) == (200, {"success": True})
            now = json.loads(request(s.url, "GET", "/lora-adapters")[2])
            assert [a["scale"] for a in now] == [0.0, 0.25], "an adapter left out gets scale 0"
            status, body = post(s.url, "/v1/completions", ASK)
            assert status == 200 and body["choices"][0]["text"] == greedy(engine, (0.0, 0.25))
        finally:
            engine.set_lora_scales((1.0, 0.5))


BAD_POSTS = [
    ("an object, not a list", {"id": 0, "scale": 1}, 'the request body is {"id": 0, "scale": 1}, expected a list'),
    ("an id no adapter has", [{"id": 2, "scale": 1}], "body[0].id is 2, expected an integer from 0 to 1"),
    ("a negative id", [{"id": -1, "scale": 1}], "body[0].id is -1, expected an integer from 0 to 1"),
    ("no scale", [{"id": 0}], "body[0].scale is null, expected a finite number"),
    ("a scale that is text", [{"id": 0, "scale": "1"}], 'body[0].scale is "1", expected a finite number'),
    ("an id twice", [{"id": 0, "scale": 1}, {"id": 0, "scale": 2}], "body[1].id 0 is listed twice"),
    ("an entry that is no object", [0], "body[0] is 0, expected an object with id and scale"),
]


@pytest.mark.parametrize("reason,body,message", BAD_POSTS, ids=[c[0] for c in BAD_POSTS])
def test_bad_lora_lists_are_400_naming_the_field(engine, reason, body, message):
    with live(engine) as s:
        status, got = post(s.url, "/lora-adapters", body)
        assert status == 400 and got["error"]["message"].startswith(message), got
        if isinstance(body, list):  # the same list as a request's `lora` field names `lora`
            status, got = post(s.url, "/v1/completions", {**ASK, "lora": body})
            assert status == 400 and got["error"]["message"] == message.replace("body", "lora"), got
            assert got["error"]["param"].startswith("lora")
        assert json.loads(request(s.url, "GET", "/lora-adapters")[2])[1]["scale"] == 0.5, "nothing changed"


def test_lora_on_a_server_without_adapters_is_refused(base_engine):
    with live(base_engine) as s:
        assert json.loads(request(s.url, "GET", "/lora-adapters")[2]) == []
        status, got = post(s.url, "/v1/completions", {**ASK, "lora": [{"id": 0, "scale": 1}]})
        assert status == 400
        assert got["error"]["message"] == "lora[0]: this server has no LoRA adapters (start it with --lora FILE)"
