"""Test helpers for the server: an app served by uvicorn in a thread on a free 127.0.0.1 port, and a
plain HTTP client (http.client) for raw requests and SSE framing. Every wait is bounded."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from marco_gguf.llama.engine import Engine
from marco_gguf.server import ServerState, create_app

TIMEOUT_S = 60


class LiveServer:
    """`create_app(state, **options)` listening on 127.0.0.1:<free port> until close(); `wrap` (an ASGI
    middleware factory) sees every request, for tests that check what a client sent."""

    def __init__(self, state: ServerState, wrap=None, **options) -> None:
        self.state = state
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(state, **options)
        config = uvicorn.Config(wrap(app) if wrap else app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "the server did not stop"

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def live(engine: Engine, **options) -> LiveServer:
    return LiveServer(ServerState(engine.info.path.name, engine=engine), **options)


def request(
    url: str, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request on a fresh connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def sse_events(response: http.client.HTTPResponse) -> Iterator[str]:
    """The data of each SSE event, checking the framing: `data: ...` lines, each event ended by a blank line."""
    while True:
        line = response.readline()
        if not line:
            return
        assert line.startswith(b"data: ") and line.endswith(b"\n"), line
        assert response.readline() == b"\n", "an event must end with a blank line"
        yield line[len(b"data: ") : -1].decode()


def open_stream(url: str, body: dict, headers: dict | None = None):
    """(connection, response) of a streaming POST /v1/chat/completions or /v1/completions."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    conn.request(
        "POST",
        path,
        body=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return conn, conn.getresponse()


def wait_idle(engine: Engine, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while engine.metrics().busy_slots or engine.metrics().queued:
        assert time.monotonic() < deadline, f"slots still busy: {engine.metrics()}"
        time.sleep(0.01)
