"""Stopping `serve` while its model loads (issue 26, item 9): llama.cpp's own loader stops at the next tensor
when asked (its progress callback), and Ctrl-C or SIGTERM during the load ends serve at once, exit 0, without
printing "ready" (it used to wait for the whole load, then print "ready (Ctrl-C to stop)" and exit)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from checkpoints import Spec

from marco_gguf.base.errors import Cancelled
from marco_gguf.gguf_io.info import read_info
from marco_gguf.llama.engine import Engine
from marco_gguf.llama.loader import load_weights


@pytest.fixture(scope="module")
def path(converted):
    return converted(Spec(dtype="f32"), "f32").path


def _asker(stop_at: int):
    """A `cancelled` that says True from its `stop_at`-th question on, counting the questions."""
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return 0 < stop_at <= len(asked)

    return cancelled, asked


# (reason, which question says stop: 1 = before the first tensor, 0 = never), counted from the whole load's
# questions: llama.cpp asks once per tensor and once more when all are read
STOPS = [
    ("before the first tensor", lambda n: 1),
    ("half way through the tensors", lambda n: n // 2),
    ("at the last question, after every tensor is read (llama.cpp still frees the model)", lambda n: n),
]


@pytest.mark.parametrize("reason,stop_at", STOPS, ids=[s[0] for s in STOPS])
def test_llama_cpp_stops_loading_when_asked(reason, stop_at, path):
    never, questions = _asker(0)
    load_weights(path, cancelled=never)  # a whole load: how many times llama.cpp asks
    n = len(questions)
    assert n == len(read_info(path).tensors) + 1, n
    cancelled, asked = _asker(stop_at(n))
    with pytest.raises(Cancelled) as e:
        load_weights(path, cancelled=cancelled)
    assert (str(e.value), len(asked)) == (f"{path}: loading stopped", stop_at(n))


def test_an_engine_stopped_while_loading_raises_cancelled(path):
    with pytest.raises(Cancelled, match=f"^{re.escape(str(path))}: loading stopped$"):
        Engine(path, ctx=256, parallel=1, cancelled=lambda: True)


# `serve` in a subprocess whose load is slowed to PAUSE_S per tensor (llama.cpp's real load, each of its
# questions delayed and counted in the file argv[1]), so that a signal surely comes while it loads
PAUSE_S = 0.4
SLOW_SERVE = f"""
import sys, time
import marco_gguf.llama.engine as engine
real, counts = engine.load_weights, open(sys.argv[1], "a")
def asked(cancelled):
    time.sleep({PAUSE_S})
    counts.write("?")
    counts.flush()
    return cancelled()
def slow(path, *, cancelled=None):
    return real(path, cancelled=lambda: asked(cancelled))
engine.load_weights = slow
from marco_gguf.cli.app import main
sys.argv = ["marco-gguf", "serve", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_loading_ends_serve_at_once(sig, path, tmp_path):
    questions = len(read_info(path).tensors) + 1  # llama.cpp's, in a whole load
    whole = PAUSE_S * questions  # the slowed load's length
    asked = tmp_path / "asked"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SERVE, str(asked), str(path), "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        first = proc.stderr.readline()
        time.sleep(1.0)  # a few tensors into the load
        proc.send_signal(sig)
        sent = time.monotonic()
        out, rest = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert re.fullmatch(rf"loading {re.escape(path.name)}; listening on http://127\.0\.0\.1:\d+\n", first), first
    assert (proc.returncode, out, rest) == (0, "", "")
    assert len(asked.read_text()) < questions / 2, "the load ran on after the signal"
    assert took < whole / 2, f"{took:.1f} s after the signal; the whole load takes {whole:.1f} s"
