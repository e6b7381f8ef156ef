"""`quality` against llama.cpp's own llama-perplexity (--kl-divergence-base, then --kl-divergence) on a GGUF pair."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import reftools
from checkpoints import Spec
from tokenizer_texts import TEXTS

from marco_gguf.base.errors import ExportError, GGUFFileError, QualityError
from marco_gguf.export import write_card
from marco_gguf.measure.quality import load_report, quality

SPEC = Spec()  # small vocabulary, rows of 256: every K-quant rule applies
N_CTX, CHUNKS = 128, 4  # 4 x 63 = 252 scored tokens: llama-perplexity prints statistics from 100
# Many scripts, code and whitespace: the small BPE splits most of it into bytes, so it is long in tokens
TEXT = "\n\n".join(text for _, text in TEXTS) + "\n"


@pytest.fixture(scope="module")
def pair(converted, tmp_path_factory):
    """(F32 reference, Q4_K_M file, evaluation text) of one checkpoint."""
    text = tmp_path_factory.mktemp("quality") / "eval.txt"
    text.write_text(TEXT, encoding="utf-8")
    return converted(SPEC, "f32").path, converted(SPEC, "q4_k_m").path, text


@pytest.fixture(scope="module")
def ours(pair):
    ref, file, text = pair
    return quality(file, ref=ref, text=text, n_ctx=N_CTX, chunks=CHUNKS, threads=2)


def _number(pattern: str, out: str, group: int = 1) -> float:
    m = re.search(pattern, out, re.M)
    assert m, f"no match for {pattern!r} in llama-perplexity's output:\n{out[-3000:]}"
    return float(m.group(group))


@pytest.fixture(scope="module")
def theirs(pair, llama_tool, tmp_path_factory):
    """llama-perplexity's figures for the same files and text."""
    ref, file, text = pair
    base = tmp_path_factory.mktemp("kld") / "base.kld"
    tool = str(llama_tool("llama-perplexity"))
    common = ["-c", str(N_CTX), "-t", "2", "--no-warmup", *reftools.weight_buffers()]  # the loader's buffers
    first = subprocess.run(
        [tool, "-m", str(ref), "-f", str(text), "--chunks", str(CHUNKS), "--kl-divergence-base", str(base), *common],
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(
        [tool, "-m", str(file), "--kl-divergence-base", str(base), "--kl-divergence", *common],
        capture_output=True,
        text=True,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    out, f = second.stdout + second.stderr, r"\s*(-?\d+\.\d+)"
    return {
        "ppl_ref": _number(rf"Final estimate: PPL ={f}", first.stdout + first.stderr),
        "ppl": _number(rf"^Mean PPL\(Q\)\s*:{f}", out),
        "ln_ppl_ratio": _number(rf"^Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:{f}", out),
        "kld": _number(rf"^Mean\s+KLD\s*:{f}", out),
        "kld_median": _number(rf"^Median\s+KLD\s*:{f}", out),
        "kld_99": _number(rf"^99\.0%\s+KLD\s*:{f}", out),
        "kld_max": _number(rf"^Maximum KLD\s*:{f}", out),
        "same_top_p": _number(rf"^Same top p\s*:{f}", out) / 100,
        "rms_dp": _number(rf"^RMS Δp\s*:{f}", out) / 100,
    }


def close(a: float, b: float, rel: float, abs_: float = 0.0) -> bool:
    return abs(a - b) <= max(rel * abs(b), abs_)


@pytest.mark.slow
def test_figures_match_llama_perplexity(ours, theirs):
    r = ours.results[0]
    assert ours.chunks == CHUNKS and ours.scored_tokens == CHUNKS * (N_CTX - 1 - N_CTX // 2)
    cases = [  # (figure, ours, llama-perplexity's, relative, absolute tolerance): the bounds
        ("PPL of the reference", ours.ref_ppl.value, theirs["ppl_ref"], 1e-3, 0),
        ("PPL of the file", r.ppl.value, theirs["ppl"], 1e-3, 0),
        ("mean KLD", r.kld.value, theirs["kld"], 1e-2, 1e-5),
        ("same top p", r.same_top_p.value, theirs["same_top_p"], 1e-2, 1e-5),
        # the same per-token values give the same order statistics; printed to 6 decimals
        ("median KLD", r.kld_distribution["median"], theirs["kld_median"], 1e-2, 1e-5),
        ("99 % KLD", r.kld_distribution["99"], theirs["kld_99"], 1e-2, 1e-5),
        ("maximum KLD", r.kld_distribution["max"], theirs["kld_max"], 1e-2, 1e-5),
        ("RMS Δp (printed to 1e-5)", r.rms_dp.value, theirs["rms_dp"], 1e-2, 2e-5),
        (
            "ln PPL ratio (its base PPL is 16-bit rounded, ours is not)",
            r.ln_ppl_ratio.value,
            theirs["ln_ppl_ratio"],
            0,
            2e-4,
        ),
    ]
    wrong = [(name, a, b) for name, a, b, rel, abs_ in cases if not close(a, b, rel, abs_)]
    assert not wrong, wrong
    assert r.kld.value > 1e-4, "Q4_K_M and F32 should differ measurably"


def test_json_round_trip_and_card(ours, pair, tmp_path):
    ref, file, _ = pair
    result = tmp_path / "q.json"
    result.write_text(json.dumps(ours.as_dict()))
    assert load_report(result) == ours
    folder = tmp_path / "Marco-Test-Instruct-GGUF"
    folder.mkdir()
    for f in (ref, file):
        os.link(f, folder / f.name)
    text = write_card(folder, quality=[result]).path.read_text()
    r = ours.results[0]
    row = (
        f"| {file.name} | {r.bits_per_weight:.2f} | {r.ppl.value:.4f} ± {r.ppl.stderr:.4f} | "
        f"{r.ln_ppl_ratio.value:.5f} ± {r.ln_ppl_ratio.stderr:.5f} | {r.kld.value:.6f} ± {r.kld.stderr:.6f} | "
        f"{r.kld_distribution['99']:.6f} | {100 * r.same_top_p.value:.2f} ± {100 * r.same_top_p.stderr:.2f} % |"
    )
    assert row in text.splitlines()
    assert f"| {ref.name} | {ours.ref_bits_per_weight:.2f} | {ours.ref_ppl.value:.4f} ± " in text
    assert f"{ours.scored_tokens:,} tokens scored" in text and "## Measured quality" in text
    assert "## Measured quality" not in write_card(folder).path.read_text()  # no result, no section


def test_card_refuses_results_for_other_files(ours, pair, tmp_path):
    ref, file, _ = pair
    folder = tmp_path / "out"
    folder.mkdir()
    os.link(ref, folder / ref.name)
    doc = ours.as_dict()
    cases = [  # (reason, edit of the result, message fragment)
        ("the measured file is not in the folder", lambda d: d, f"measures {file.name}, which is not among"),
        (
            "the file changed since it was measured",
            lambda d: {**d, "results": [{**d["results"][0], "path": str(ref)}]},
            "bytes, the file now has",
        ),
        ("not a quality result", lambda d: {"kind": "something else"}, "not a quality result of format 1"),
    ]
    for reason, edit, fragment in cases:
        path = tmp_path / "q.json"
        path.write_text(json.dumps(edit(doc)))
        with pytest.raises((ExportError, QualityError), match=re.escape(fragment)):
            write_card(folder, quality=[path])
        assert not (folder / "README.md").exists(), reason


def _patched(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    """A copy of a GGUF with one length-prefixed header string replaced by another of the same length."""
    data = src.read_bytes()
    key = len(old).to_bytes(8, "little") + old
    assert len(old) == len(new) and key in data
    dst.write_bytes(data.replace(key, len(new).to_bytes(8, "little") + new, 1))
    return dst


def test_errors(pair, tmp_path):
    ref, file, text = pair
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    short = tmp_path / "short.txt"
    short.write_text("only a few words\n")
    other_vocab = _patched(ref, tmp_path / "other-vocab.gguf", b"<|im_start|>", b"<|im_begin|>")
    other_arch = _patched(file, tmp_path / "other-arch.gguf", b"qwen3moe", b"qwen2moe")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    cases = [  # (reason, file, ref, text, error type, message fragments)
        ("text not UTF-8", file, ref, latin1, QualityError, ["latin1.txt: not UTF-8 text (byte 0xe9 at offset 3 of"]),
        (
            "text shorter than 2 chunks",
            file,
            ref,
            short,
            QualityError,
            ["short.txt: ", " tokens, but -c 128 needs at least 256 (2 chunks)"],
        ),
        (
            "vocabularies differ",
            other_vocab,
            ref,
            text,
            QualityError,
            ["other-vocab.gguf: another vocabulary than", "is '<|im_begin|>'", "has '<|im_start|>'"],
        ),
        ("not qwen3moe", other_arch, ref, text, GGUFFileError, ["architecture 'qwen2moe' is not qwen3moe"]),
        ("not a GGUF", not_gguf, ref, text, GGUFFileError, ["notes.gguf"]),
    ]
    for reason, f, r, t, error, fragments in cases:
        with pytest.raises(error) as info:
            quality(f, ref=r, text=t, n_ctx=N_CTX, threads=1)
        for fragment in fragments:
            assert fragment in str(info.value), (reason, str(info.value))


def test_cli_error_is_one_line(pair, tmp_path):
    ref, file, _ = pair
    short = tmp_path / "short.txt"
    short.write_text("too short\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "marco_gguf",
            "quality",
            str(file),
            "--ref",
            str(ref),
            "--text",
            str(short),
            "-c",
            str(N_CTX),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "needs at least 256 (2 chunks)" in proc.stderr


def test_cli_json(pair, ours):
    ref, file, text = pair
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "marco_gguf",
            "quality",
            str(file),
            "--ref",
            str(ref),
            "--text",
            str(text),
            "-c",
            str(N_CTX),
            "--chunks",
            str(CHUNKS),
            "-t",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "marco-gguf quality" and doc["scored_tokens"] == ours.scored_tokens
    assert doc["results"][0]["kld"]["value"] == pytest.approx(ours.results[0].kld.value, rel=1e-6)
