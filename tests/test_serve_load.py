"""The server under abuse: hundreds of malformed requests, many streams against few slots with clients
that vanish, a full queue, and stop signals. It must answer every one with OpenAI's error JSON (4xx,
never a 500), free the slots of clients that leave, keep its memory flat and stop cleanly."""

from __future__ import annotations

import gc
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from checkpoints import Spec
from serving import live, open_stream, request, sse_events, wait_idle

from marco_gguf.llama.engine import Engine

VALID = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
LIMIT = 65536  # the fault server's body limit (bytes)
# (field, values that are wrong for it): types, ranges and unsupported values
WRONG = {
    "temperature": ["hot", [], {}, True, -0.1, 2.5, float("inf")],
    "top_p": ["x", 1.5, -1],
    "top_k": [1.5, "3", -1, True],
    "min_p": [2, "0"],
    "presence_penalty": [3, "1"],
    "frequency_penalty": [-3, []],
    "repeat_penalty": [-1, "1"],
    "seed": [1.5, "1", 2**70],
    "max_tokens": [0, -5, "10", 1.0, True],
    "max_completion_tokens": [0, "x"],
    "stream": ["yes", 1, []],
    "stop": [5, [1, 2], ["a"] * 17, {"a": 1}],
    "n": [2, 0, "1"],
    "logprobs": [True],
    "top_logprobs": [3],
    "stream_options": [{"include_usage": True}, "x"],
    "messages": [
        "hi",
        [],
        [1],
        [{"role": "x", "content": "a"}],
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
        [{"content": "a"}],
        [{"role": "assistant", "tool_calls": [{"function": {"name": 1}}]}],
    ],
    "tools": [
        "x",
        [{"type": "x"}],
        [{"type": "function", "function": {"name": "bad name!"}}],
        [{"type": "function", "function": {}}],
        [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
    ],
    "tool_choice": ["always", {"type": "function", "function": {"name": "nope"}}, 5],
    "response_format": [
        "json",
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": 5}},
    ],
}
WRONG_COMPLETION = {
    "prompt": [5, [], ["a", "b"], [-1], [10**9], {"a": 1}, None],
    "echo": [True],
    "best_of": [2],
    "suffix": ["x"],
}
TOOL = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def _chunks(data: bytes):
    for i in range(0, len(data), 8192):
        yield data[i : i + 8192]


# (category, maker(rng) -> (method, path, body bytes or an iterator of chunks, expected status))
CATEGORIES = [
    ("body is not JSON", lambda r: ("POST", "/v1/chat/completions", b"{" + r.randbytes(r.randint(0, 40)), 400)),
    (
        "truncated JSON",
        lambda r: ("POST", "/v1/chat/completions", (b := json.dumps(VALID).encode())[: r.randint(1, len(b) - 1)], 400),
    ),
    (
        "top level is not an object",
        lambda r: (
            "POST",
            r.choice(["/v1/chat/completions", "/v1/completions"]),
            json.dumps(r.choice([[], [VALID], 5, "x", None, True])).encode(),
            400,
        ),
    ),
    (
        "a chat field of the wrong type, range or value",
        lambda r: (
            "POST",
            "/v1/chat/completions",
            json.dumps(
                {
                    **VALID,
                    **({"tools": TOOL} if (k := r.choice(list(WRONG))) == "tool_choice" else {}),
                    k: r.choice(WRONG[k]),
                }
            ).encode(),
            400,
        ),
    ),
    (
        "a completion field of the wrong type or value",
        lambda r: (
            "POST",
            "/v1/completions",
            json.dumps(
                {
                    "prompt": "hi",
                    "max_tokens": 2,
                    (k := r.choice(list(WRONG_COMPLETION))): r.choice(WRONG_COMPLETION[k]),
                }
            ).encode(),
            400,
        ),
    ),
    (
        "a prompt longer than the context",
        lambda r: (
            "POST",
            "/v1/chat/completions",
            json.dumps({**VALID, "messages": [{"role": "user", "content": "hi " * r.randint(1100, 4000)}]}).encode(),
            400,
        ),
    ),
    ("an unknown path", lambda r: (r.choice(["GET", "POST"]), "/v1/" + "".join(r.choices("abcxyz/", k=8)), b"{}", 404)),
    (
        "a wrong method",
        lambda r: (r.choice(["GET", "PUT", "DELETE"]), r.choice(["/v1/chat/completions", "/v1/completions"]), b"", 405),
    ),
    ("a body over the limit", lambda r: ("POST", "/v1/chat/completions", b" " * (LIMIT + r.randint(1, 9999)), 413)),
    (
        "a chunked body over the limit",
        lambda r: ("POST", "/v1/completions", _chunks(b" " * (LIMIT + r.randint(1, 9999))), 413),
    ),
]


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(Spec(dtype="f32"), "f32").path, ctx=1024, parallel=4, threads=2) as e:
        yield e


def _send(url: str, method: str, path: str, body) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        conn.close()


def test_malformed_requests_get_4xx_json_errors(engine):
    rng, seen, deadline = random.Random(13), {}, time.monotonic() + 40
    with live(engine, max_body=LIMIT) as s:
        for i in range(1000):
            if time.monotonic() > deadline:
                break
            (
                category,
                make,
            ) = CATEGORIES[i % len(CATEGORIES)]
            method, path, body, expected = make(rng)
            status, kind, raw = _send(s.url, method, path, body)
            assert (status, kind) == (expected, "application/json"), (
                category,
                body if isinstance(body, bytes) else "",
                raw,
            )
            error = json.loads(raw)["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], (category, error)
            seen[category] = seen.get(category, 0) + 1
        assert sum(seen.values()) >= 500 and set(seen) == {c for c, _ in CATEGORIES}, seen
        status, _, raw = _send(s.url, "POST", "/v1/chat/completions", json.dumps(VALID).encode())
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 2


def _client(url: str, rng: random.Random, until: float, tally: dict, lock: threading.Lock) -> None:
    while time.monotonic() < until:
        words = " ".join(rng.choices(["moe", "expert", "token", "route", "cache", "slot"], k=rng.randint(1, 30)))
        leave = rng.random() < 0.3 and rng.randint(1, 6)
        conn, r = open_stream(
            url,
            {
                "messages": [{"role": "user", "content": words}],
                "max_tokens": rng.randint(8, 96),
                "temperature": rng.random(),
            },
        )
        outcome = "error" if r.status != 200 else "done"
        if r.status == 200:
            for n, data in enumerate(sse_events(r)):
                if leave and n >= leave:
                    outcome = "left"
                    break
                if data != "[DONE]" and "error" in json.loads(data):
                    outcome = "error"
            else:
                outcome = "done" if data == "[DONE]" else "error"
        conn.close()
        with lock:
            tally[outcome] = tally.get(outcome, 0) + 1


# clients and seconds of the load test; MARCO_GGUF_SOAK=32,60 runs the full soak (BENCHMARKS.md)
SOAK = tuple(int(v) for v in os.environ.get("MARCO_GGUF_SOAK", "16,15").split(","))


@pytest.mark.slow
def test_many_streams_few_slots_clients_leaving(engine):
    """16 streams against 4 slots for 15 s, about 30 % of clients leaving mid-stream: every other stream ends
    with [DONE], the slots all come back, and memory after the run is within 5 % of memory after a warm-up."""
    process = psutil.Process()
    with live(engine) as s:
        for seconds, clients in ((3, SOAK[0]), (SOAK[1], SOAK[0])):  # warm-up, then the measured run
            tally, lock, rng = {}, threading.Lock(), random.Random(seconds)
            until = time.monotonic() + seconds
            threads = [
                threading.Thread(target=_client, args=(s.url, random.Random(rng.random()), until, tally, lock))
                for _ in range(clients)
            ]
            cancelled = engine.metrics().requests_cancelled_total
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
            wait_idle(engine)
            gc.collect()
            if seconds == 3:
                warm = process.memory_info().rss
        after = process.memory_info().rss
        print(f"soak {SOAK}: {tally}, RSS after warm-up {warm:,} B, after the run {after:,} B")
        assert tally.get("error", 0) == 0 and tally["done"] >= 32 and tally["left"] >= 8, tally
        assert engine.metrics().requests_cancelled_total > cancelled  # some left while still generating
        assert abs(after - warm) <= 0.05 * warm, (warm, after)
        status, _, _body = request(s.url, "POST", "/v1/chat/completions", VALID)
        assert status == 200


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no stream"])
def test_a_client_that_leaves_frees_its_slot(engine, stream):
    with live(engine) as s:
        before = engine.metrics().requests_cancelled_total
        body = {**VALID, "max_tokens": 1000}
        if stream:
            conn, r = open_stream(s.url, body)
            events = sse_events(r)
            [next(events) for _ in range(3)]
        else:
            conn = http.client.HTTPConnection(*s.url.removeprefix("http://").split(":"), timeout=30)
            conn.request(
                "POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            while not engine.metrics().busy_slots:
                time.sleep(0.005)
        left = time.monotonic()
        conn.close()
        wait_idle(engine, 2.0)
        assert engine.metrics().requests_cancelled_total == before + 1
        assert time.monotonic() - left < 2.0


def test_a_full_queue_is_503(converted):
    with (
        Engine(converted(Spec(dtype="f32"), "f32").path, ctx=2048, parallel=1, threads=1, queue_size=1) as e,
        live(e) as s,
    ):
        first, r1 = open_stream(s.url, {**VALID, "max_tokens": 1500})
        next(sse_events(r1))
        deadline = time.monotonic() + 10
        while not e.metrics().busy_slots:
            assert time.monotonic() < deadline
        second, _r2 = open_stream(s.url, {**VALID, "max_tokens": 1500})  # waits for the slot
        while not e.metrics().queued:
            assert time.monotonic() < deadline
        status, _, body = request(s.url, "POST", "/v1/chat/completions", VALID)
        assert (status, json.loads(body)["error"]["message"]) == (
            503,
            "the queue is full (1 requests waiting) (retry later)",
        )
        first.close()
        second.close()
        wait_idle(e)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_streams_with_a_final_chunk_and_exits_0(sig, converted):
    path = converted(Spec(dtype="f32"), "f32").path
    proc = subprocess.Popen(
        [sys.executable, "-m", "marco_gguf", "serve", str(path), "--port", "0", "--threads", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        assert "ready" in proc.stderr.readline()
        _conn, r = open_stream(url, {**VALID, "max_tokens": 5000})
        events = sse_events(r)
        [next(events) for _ in range(3)]
        proc.send_signal(sig)
        rest = list(events)
        assert rest[-1] == "[DONE]" and json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
        assert len(rest) < 4000  # ended early, not run to max_tokens
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _taken_port(d, path):
    sock = _taken_port.sock = __import__("socket").socket()  # held until the test ends
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return [str(path), "--port", str(sock.getsockname()[1])]


# (reason, args(tmp dir, fixture path), exit status (2: a usage error, as for every command), text on stderr)
REFUSED = [
    ("missing file", lambda d, p: [str(d / "missing.gguf")], 1, ["error: ", "missing.gguf: no such file"]),
    ("the port is taken", _taken_port, 1, ["error: cannot listen on 127.0.0.1:", "Address already in use"]),
    ("--parallel out of range", lambda d, p: [str(p), "--parallel", "65"], 2, ["less than or equal to 64"]),
    (
        "--slot-prompt-similarity out of range",
        lambda d, p: [str(p), "--slot-prompt-similarity", "1.5"],
        2,
        ["Invalid value for '--slot-prompt-similarity': Input should be less than or equal to 1"],
    ),
    (
        "every interface without a key warns first",
        lambda d, p: [str(d / "missing.gguf"), "--host", "0.0.0.0"],
        1,
        ["warning: listening on 0.0.0.0 without --api-key", "missing.gguf: no such file"],
    ),
]


@pytest.mark.parametrize("reason,args,status,lines", REFUSED, ids=[r[0] for r in REFUSED])
def test_serve_refusals_exit_before_serving(reason, args, status, lines, converted, tmp_path):
    path = converted(Spec(dtype="f32"), "f32").path
    proc = subprocess.run(
        [sys.executable, "-m", "marco_gguf", "serve", *args(tmp_path, path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == status and proc.stdout == "" and "Traceback" not in proc.stderr
    assert all(fragment in proc.stderr for fragment in lines), proc.stderr
