"""imatrix and convert --imatrix/--calibrate: bad input is one typed line, and nothing is written."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from checkpoints import Spec
from typer.testing import CliRunner

from marco_gguf import convert
from marco_gguf.base.errors import GGUFFileError, ImatrixError, Terminated, raise_terminated
from marco_gguf.calibrate import calibrate_convert
from marco_gguf.cli.app import app
from marco_gguf.quant.imatrix import compute_imatrix, read_text
from marco_gguf.quant.imatrix_file import Entry, read_imatrix, write_imatrix

SPEC = Spec(dtype="f32")
CTX = 64


@pytest.fixture(scope="module")
def model(converted) -> Path:
    return converted(SPEC, "f32").path


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(read_text(None)[0][:6000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def good_imatrix(model, text, tmp_path_factory) -> Path:
    return compute_imatrix(
        model, text=text, outfile=tmp_path_factory.mktemp("im") / "good.imatrix.gguf", ctx=CTX, chunks=2, threads=2
    ).path


def edited(src: Path, dst: Path, edit) -> Path:
    im = read_imatrix(src)
    edit(im.entries)
    return write_imatrix(im, dst)


def foreign_layer(entries):  # an imatrix of a deeper model
    entries["blk.7.attn_q.weight"] = Entry(np.ones(256, np.float32), np.array([128]))


def narrower(entries):  # an imatrix of a model with another hidden size
    entries["blk.0.attn_q.weight"] = Entry(np.ones(128, np.float32), np.array([128]))


def fewer_experts(entries):
    e = entries["blk.1.ffn_down_exps.weight"]
    entries["blk.1.ffn_down_exps.weight"] = Entry(e.sums[: 8 * e.ne0], e.counts[:8])


def truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def truncated_dat(src: Path, dst: Path) -> Path:
    body = b"".join(
        [
            np.int32(1).tobytes(),
            np.int32(19).tobytes(),
            b"blk.0.attn_q.weight",
            np.int32(1).tobytes(),
            np.int32(256).tobytes(),
            np.ones(100, np.float32).tobytes(),
        ]
    )
    dst.write_bytes(body)
    return dst


CONVERT_CASES = [  # (reason, make the imatrix file from a good one, message fragments)
    (
        "made for a model with more layers",
        lambda s, d: edited(s, d, foreign_layer),
        ["imatrix entry blk.7.attn_q.weight", "name no tensor of this model", "another model"],
    ),
    (
        "made for a model with another hidden size",
        lambda s, d: edited(s, d, narrower),
        ["blk.0.attn_q.weight has 128 importance values, the tensor needs 256 (256 x 1)"],
    ),
    (
        "made for a model with fewer experts",
        lambda s, d: edited(s, d, fewer_experts),
        ["blk.1.ffn_down_exps.weight has 2,048 importance values, the tensor needs 4,096 (256 x 16)"],
    ),
    ("GGUF imatrix cut in half by an interrupted copy", truncated, ["truncated or damaged GGUF imatrix"]),
    (
        "legacy .dat cut inside its values",
        truncated_dat,
        ["truncated imatrix", "blk.0.attn_q.weight's 256 values needs 1024 bytes"],
    ),
    ("an empty file", lambda s, d: (d.write_bytes(b""), d)[1], ["truncated imatrix: the entry count needs 4 bytes"]),
    (
        "a text file given as the imatrix",
        lambda s, d: (d.write_text("blk.0 weights, not an imatrix"), d)[1],
        ["neither a GGUF nor a legacy .dat imatrix"],
    ),
]


@pytest.mark.parametrize("reason,make,fragments", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_convert_refuses_bad_imatrix(reason, make, fragments, checkpoint, good_imatrix, tmp_path):
    bad = make(good_imatrix, tmp_path / "bad.imatrix")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImatrixError) as e:
        convert(checkpoint(SPEC), preset="q4_k_m", imatrix=bad, outdir=out, threads=2)
    msg = str(e.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg
    assert list(out.iterdir()) == []


def test_model_gguf_is_not_an_imatrix(checkpoint, model, tmp_path):
    with pytest.raises(ImatrixError, match=r"not an imatrix \(general.type 'model'"):
        convert(checkpoint(SPEC), preset="q4_k_m", imatrix=model, outdir=tmp_path, threads=2)
    assert list(tmp_path.iterdir()) == []


def test_very_low_bit_needs_an_imatrix(checkpoint, tmp_path):
    with pytest.raises(ImatrixError, match=r"blk.0.attn_q.weight is IQ2_XS, which needs an importance matrix") as e:
        convert(checkpoint(SPEC), preset="iq2_xs", outdir=tmp_path, threads=2)
    assert "--imatrix" in e.value.hint and list(tmp_path.iterdir()) == []


def test_very_low_bit_needs_every_entry(checkpoint, good_imatrix, tmp_path):
    partial = edited(good_imatrix, tmp_path / "partial.gguf", lambda en: en.pop("blk.1.ffn_up_exps.weight"))
    with pytest.raises(
        ImatrixError, match=r"no importance data for blk.1.ffn_up_exps.weight, which iq3_xxs makes IQ3_XXS"
    ):
        convert(checkpoint(SPEC), preset="iq3_xxs", imatrix=partial, outdir=tmp_path / "x", threads=2)


def write_llama_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


TEXT_CASES = [  # (reason, text bytes or None for the built-in, ctx, error type, fragments)
    (
        "latin-1 text",
        "Größe und Café".encode("latin-1") * 200,
        CTX,
        ImatrixError,
        ["not UTF-8 text (byte 0xf6 at offset 2 of 2,800)", "iconv"],
    ),
    (
        "shorter than one chunk",
        b"just a few words",
        CTX,
        ImatrixError,
        ["tokens, fewer than one chunk of -c 64", "at least 64 tokens"],
    ),
]


@pytest.mark.parametrize("reason,data,ctx,error,fragments", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_imatrix_refuses_bad_text(reason, data, ctx, error, fragments, model, tmp_path):
    (tmp_path / "t.txt").write_bytes(data)
    with pytest.raises(error) as e:
        compute_imatrix(model, text=tmp_path / "t.txt", outfile=tmp_path / "out.gguf", ctx=ctx)
    assert "\n" not in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)
    assert not (tmp_path / "out.gguf").exists()


def test_imatrix_refuses_other_architectures(tmp_path, text):
    with pytest.raises(GGUFFileError, match="architecture 'llama' is not qwen3moe"):
        compute_imatrix(write_llama_gguf(tmp_path / "llama.gguf"), text=text, outfile=tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_cli_imatrix_json(model, text, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "imatrix",
            str(model),
            "--text",
            str(text),
            "-o",
            str(tmp_path / "m.gguf"),
            "-c",
            str(CTX),
            "--chunks",
            "2",
            "-t",
            "2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["chunks"], d["ctx"], d["n_entries"], d["dataset"]) == (2, CTX, 16, str(text))
    assert read_imatrix(tmp_path / "m.gguf").chunk_count == 2


def test_cli_error_is_one_red_line(model, tmp_path):
    (tmp_path / "t.txt").write_bytes(b"\xff\xfe\x00")
    r = CliRunner().invoke(
        app, ["imatrix", str(model), "--text", str(tmp_path / "t.txt"), "-o", str(tmp_path / "m.gguf")]
    )
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "not UTF-8 text" in r.stderr
    assert not (tmp_path / "m.gguf").exists()


def test_calibrate_leaves_only_the_quant(checkpoint, text, tmp_path):
    kept = tmp_path / "kept.imatrix.gguf"
    r = calibrate_convert(
        checkpoint(SPEC), preset="q4_k_m", text=text, ctx=CTX, chunks=2, threads=2, outdir=tmp_path, keep_imatrix=kept
    )
    assert r.conversion.path.name == "Marco-Test-Instruct-i1-Q4_K_M.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([r.conversion.path.name, kept.name])
    fields = gguf.GGUFReader(r.conversion.path).fields
    assert fields["quantize.imatrix.file"].contents() == str(kept)
    assert fields["quantize.imatrix.chunks_count"].contents() == 2


def test_calibrate_cleans_up_on_error(checkpoint, tmp_path):
    (tmp_path / "t.txt").write_bytes(b"too short")
    with pytest.raises(ImatrixError, match="fewer than one chunk"):
        calibrate_convert(
            checkpoint(SPEC), preset="q4_k_m", text=tmp_path / "t.txt", ctx=CTX, threads=2, outdir=tmp_path
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]  # no scratch folder, no temporary Q8_0


def test_cli_calibrate_with_text(checkpoint, tmp_path):
    """`convert SOURCE --calibrate TEXT`: one command, the i1 file and nothing else left in the folder."""
    text = tmp_path / "t.txt"
    text.write_text(read_text(None)[0][:2500], encoding="utf-8")  # a few chunks of the default -c 512
    out = tmp_path / "out"
    out.mkdir()
    r = CliRunner().invoke(
        app,
        [
            "convert",
            str(checkpoint(SPEC)),
            "--preset",
            "q4_k_m",
            "--outdir",
            str(out),
            "-t",
            "2",
            "--json",
            "--calibrate",
            str(text),
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["imatrix"]["dataset"] == str(text) and d["calibration_model"] == "temporary Q8_0"
    assert [p.name for p in out.iterdir()] == ["Marco-Test-Instruct-i1-Q4_K_M.gguf"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--keep-imatrix", "k.gguf"], "go with --calibrate"),
        (["--calibrate", "--imatrix", "x.gguf"], "not both"),
    ],
    ids=["keep without calibrate", "calibrate and imatrix"],
)
def test_cli_calibrate_option_errors(args, fragment, checkpoint, tmp_path):
    r = CliRunner().invoke(app, ["convert", str(checkpoint(SPEC)), "--outdir", str(tmp_path), *args])
    assert r.exit_code == 2 and fragment in " ".join(r.output.replace("│", " ").split())  # Typer boxes usage errors
    assert list(tmp_path.iterdir()) == []


def test_card_marks_importance_matrix_quants(checkpoint, good_imatrix, tmp_path):
    from marco_gguf.export import write_card

    convert(checkpoint(SPEC), preset="q4_k_m", imatrix=good_imatrix, outdir=tmp_path, threads=2)
    convert(checkpoint(SPEC), preset="q8_0", outdir=tmp_path, threads=2)
    rows = {r.filename: r for r in write_card(tmp_path).rows}
    i1 = rows["Marco-Test-Instruct-i1-Q4_K_M.gguf"]
    assert i1.quant_type == "i1-Q4_K_M" and i1.description.startswith("Importance-matrix quant (imatrix from ")
    assert rows["Marco-Test-Instruct-Q8_0.gguf"].quant_type == "Q8_0"
    assert "| i1-Q4_K_M |" in (tmp_path / "README.md").read_text()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
INTERRUPTED = "interrupted: nothing was left half-written"
# (reason, command line with {model}/{source}/{out}, what the progress bar shows once chunks are being evaluated);
# the built-in text at -c 64 is ~800 chunks, so the signal lands mid-run, mostly inside llama_decode
CHUNKS_RUNNING = r"[\d,]+/[\d,]+ chunks · [\d,]+ tokens/s"  # the progress bar, once chunks are counted
INTERRUPT_CASES = [
    (
        "imatrix: the output file is only written at the end",
        ["imatrix", "{model}", "-o", "{out}/m.imatrix.gguf", "-c", "64", "-t", "2"],
        CHUNKS_RUNNING,
    ),
    (
        "convert --calibrate: its temporary Q8_0 and imatrix go too",
        ["convert", "{source}", "--preset", "q4_k_m", "--outdir", "{out}", "-t", "2", "--calibrate"],
        CHUNKS_RUNNING,
    ),
]


def interrupted_run(
    args: list[str], running: str, sig: int = signal.SIGINT, timeout: float = 120
) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pty (so its progress bar draws), send `sig` once `running` shows; (code, stderr
    without terminal controls, stdout)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "marco_gguf", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # as if run from a shell
    os.close(slave)
    seen, deadline, sent = "", time.monotonic() + timeout, False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536).decode("utf-8", "replace")
                except OSError:  # the program exited and closed the pty
                    break
                seen += chunk
            if not sent and re.search(running, ANSI.sub("", seen)):
                proc.send_signal(sig)
                sent = True
            if proc.poll() is not None and not ready:
                break
        else:
            proc.kill()
            raise AssertionError(f"no exit within {timeout} s; stderr ends with:\n{ANSI.sub('', seen)[-1500:]}")
    finally:
        os.close(master)
    assert sent, f"{running!r} never showed:\n{ANSI.sub('', seen)[-1500:]}"
    return proc.wait(10), ANSI.sub("", seen), proc.stdout.read().decode()


SIGNALS = [  # (signal, exit code, the last line's first word): Ctrl-C, and kill / timeout / a service manager's stop
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated"),
]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,word", SIGNALS, ids=[s[2] for s in SIGNALS])
@pytest.mark.parametrize("reason,args,running", INTERRUPT_CASES, ids=[c[0] for c in INTERRUPT_CASES])
def test_a_stop_leaves_nothing_and_says_so(reason, args, running, sig, code, word, checkpoint, converted, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fill = {"model": str(converted(Spec(), "q8_0").path), "source": str(checkpoint(SPEC)), "out": str(out)}
    got, stderr, stdout = interrupted_run([a.format(**fill) for a in args], running, sig)
    assert got == code, stderr[-1500:]
    lines = [line for line in stderr.split("\n") if line.strip()]
    assert lines[-1].strip() == INTERRUPTED.replace("interrupted", word), stderr[-1500:]
    assert stderr.count(word) == 1, stderr[-1500:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    assert stdout == "" and list(out.iterdir()) == []


RAISED_AFTER = [  # (signal, the handler a program has for it, what is raised once llama.cpp returns)
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt),  # Python's own, as started from a shell
    (signal.SIGTERM, raise_terminated, Terminated),  # the CLI's (ui.errors_to_exit)
]


@pytest.mark.parametrize("sig,handler,raised", RAISED_AFTER, ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_llama_cpp_is_raised_after_it_returns(sig, handler, raised):
    """Python raises at the first bytecode after the signal; when that is the eval callback's entry (the signal came
    while llama.cpp computed), ctypes drops it and the run goes on. deferred_sigint turns it into a flag the
    callback obeys (stop at the next node) and raises once the C call is over."""
    from marco_gguf.llama.observer import GraphObserver, deferred_sigint

    obs = GraphObserver(lambda t: True, lambda t: None)
    outer = signal.signal(sig, handler)
    try:
        with pytest.raises(raised) as caught, deferred_sigint(obs):
            signal.raise_signal(sig)  # handled here, as it would be at the callback's entry
            assert obs.interrupted
            assert (obs._call(0, True, 0), obs._call(0, False, 0)) == (True, False)  # need the node, then stop
        assert caught.type is raised and not obs.interrupted and signal.getsignal(sig) is handler
    finally:
        signal.signal(sig, outer)
