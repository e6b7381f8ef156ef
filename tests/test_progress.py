"""Every long-running library call reports one event type carrying its unit, and the CLI draws it by unit."""

from __future__ import annotations

import pytest
from checkpoints import Spec
from rich.console import Console

from marco_gguf import convert, synthesize
from marco_gguf.base.progress import UNITS, ProgressEvent
from marco_gguf.cli import ui
from marco_gguf.measure.bench import bench
from marco_gguf.measure.quality import quality
from marco_gguf.measure.verify import verify
from marco_gguf.quant.imatrix import compute_imatrix, read_text

SPEC = Spec(dtype="f32")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "t.txt"
    path.write_text(read_text(None)[0][:6000], encoding="utf-8")
    return path


# (reason, call(fixtures, tmp, progress), unit the events carry)
CALLS = [
    (
        "convert counts the bytes it writes",
        lambda f, tmp, p: convert(f.ckpt, preset="q8_0", outdir=tmp, threads=1, progress=p),
        "bytes",
    ),
    (
        "synth counts the bytes it writes",
        lambda f, tmp, p: synthesize(tmp / "s", shape="tiny", layers=1, vocab="small", progress=p),
        "bytes",
    ),
    (
        "verify counts parameters, which it compares (not bytes)",
        lambda f, tmp, p: verify(f.gguf, source=f.ckpt, load=False, progress=p),
        "parameters",
    ),
    (
        "imatrix counts text chunks",
        lambda f, tmp, p: compute_imatrix(
            f.gguf, text=f.text, outfile=tmp / "i.gguf", ctx=64, chunks=3, threads=1, progress=p
        ),
        "chunks",
    ),
    (
        "quality counts the chunks of every pass",
        lambda f, tmp, p: quality(f.gguf, ref=f.gguf, text=f.text, n_ctx=64, chunks=2, threads=1, progress=p),
        "chunks",
    ),
    (
        "bench counts its steps (probes, warm-ups, repetitions)",
        lambda f, tmp, p: bench(f.gguf, n_prompt=8, n_gen=4, threads=1, reps=1, progress=p),
        "steps",
    ),
]


class _Fixtures:
    def __init__(self, ckpt, gguf, text):
        self.ckpt, self.gguf, self.text = ckpt, gguf, text


@pytest.mark.parametrize("reason,call,unit", CALLS, ids=[c[0] for c in CALLS])
def test_each_call_reports_progress_events_in_its_unit(reason, call, unit, checkpoint, converted, text, tmp_path):
    events: list[ProgressEvent] = []
    call(_Fixtures(checkpoint(SPEC), converted(SPEC, "f32").path, text), tmp_path, events.append)
    assert events and all(isinstance(e, ProgressEvent) and e.unit == unit for e in events)
    assert unit in UNITS
    assert [e.done for e in events] == sorted(e.done for e in events), "progress never goes back"
    last = events[-1]
    assert last.total is not None and last.done <= last.total
    if unit != "steps":  # a step is reported as it starts
        assert last.done == last.total


FIGURES = [
    (
        "bytes: sizes and speed",
        ProgressEvent(3 * 2**30, 6 * 2**30, "bytes", "blk.3"),
        2**30,
        "3.00 GiB/6.00 GiB · 1.00 GiB/s",
    ),
    ("parameters: a count of the unit", ProgressEvent(1500, 3000, "parameters"), 0.0, "1,500/3,000 parameters"),
    (
        "chunks with the running tokens/s",
        ProgressEvent(3, 10, "chunks", rate=1234.4, rate_unit="tokens/s"),
        0.0,
        "3/10 chunks · 1,234 tokens/s",
    ),
]


@pytest.mark.parametrize("reason,event,speed,shown", FIGURES, ids=[c[0] for c in FIGURES])
def test_the_bar_shows_each_unit_as_its_own(reason, event, speed, shown):
    assert ui._count(event, speed) == shown


def test_the_bar_draws_on_a_terminal_and_restarts_when_the_unit_changes(monkeypatch):
    console = Console(file=open("/dev/null", "w"), force_terminal=True)  # noqa: SIM115 - closed below
    monkeypatch.setattr(ui, "err", console)
    with ui.progress_bar("converting", quiet=False) as update:
        assert update is not None
        update(ProgressEvent(10, 100, "bytes", "a"))
        update(ProgressEvent(1, 4, "chunks", "imatrix", 10.0, "tokens/s"))
        update(ProgressEvent(100, 100, "bytes", "b"))
    console.file.close()
    with ui.progress_bar("converting", quiet=True) as update:
        assert update is None
