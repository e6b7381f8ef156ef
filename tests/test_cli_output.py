"""What the CLI prints, pinned: user text and paths shown as they are (square brackets kept, never read as Rich
markup), `inspect`'s facts (file type, experts, a pruned file's record, the context note, llama.cpp's compute
buffers), errors that name the real cause, `verify`'s summary, and the shared options (issues 21 and 26)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import Spec
from typer.testing import CliRunner

from marco_gguf.base.progress import ProgressEvent
from marco_gguf.base.units import human_bytes
from marco_gguf.cli import ui
from marco_gguf.cli.app import app
from marco_gguf.experts.prune import prune
from marco_gguf.experts.usage import expert_usage
from marco_gguf.gguf_io.info import read_info
from marco_gguf.quant.imatrix import read_text

SMALL = Spec(dtype="f32")  # 2 layers, hidden 256, 16 experts top-4, expert width 256, 640-token vocabulary


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "marco_gguf", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def error_line(message: str, hint: str | None = None) -> str:
    return f"error: {message}" + (f" — {hint}" if hint else "") + "\n"


# --- square brackets and markup in user text (issue 26 item 3, issue 21) ---


@pytest.fixture(scope="module")
def bracketed(converted, tmp_path_factory):
    """Copies of a small GGUF under names Rich markup would eat or choke on."""
    root = tmp_path_factory.mktemp("brackets")
    (root / "a[").mkdir()
    src = converted(SMALL, "q8_0").path
    for name in ("a[/]b.gguf", "[bold red]x.gguf", "model[v2].gguf"):
        shutil.copy(src, root / name)
    return root


NAMES = [  # (reason, path as typed, the first line inspect prints: the file's name)
    ("'[/]' is a Rich closing tag: it crashed with MarkupError", "a[/]b.gguf", "]b.gguf"),
    ("a style tag printed the title in red and dropped the tag", "[bold red]x.gguf", "[bold red]x.gguf"),
    ("'[v2]' vanished from the name", "model[v2].gguf", "model[v2].gguf"),
]


@pytest.mark.parametrize("reason,name,title", NAMES, ids=[n[0] for n in NAMES])
def test_inspect_shows_bracketed_names(reason, name, title, bracketed):
    proc = cli("inspect", str(bracketed / name))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == title


MISSING = [  # (reason, command): each names the missing path whole, brackets included
    ("inspect of a missing bracketed path crashed with MarkupError", "inspect"),
    ("chat of a missing bracketed path crashed with MarkupError", "chat"),
    ("bench reads the header first, through the same path", "bench"),
]


@pytest.mark.parametrize("reason,command", MISSING, ids=[m[0] for m in MISSING])
def test_missing_bracketed_path_is_named_whole(reason, command, tmp_path):
    path = tmp_path / "a[" / "]missing[v2].gguf"
    proc = cli(command, str(path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == error_line(f"{path}: no such file")


def test_convert_names_a_bracketed_output(checkpoint, tmp_path):
    """Reason: `convert -o 'out[v2].gguf'` reported `wrote out.gguf`."""
    out = tmp_path / "out[v2].gguf"
    proc = cli("convert", str(checkpoint(SMALL)), "--preset", "q8_0", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"wrote {out}" and out.is_file()


def test_plot_hint_keeps_its_extra(converted, monkeypatch, tmp_path):
    """Reason: the hint said `pip install 'marco-gguf'`: Rich ate `[plots]` as a tag."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is missing
    model = converted(SMALL, "f32").path
    r = CliRunner().invoke(app, ["experts", str(model), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 1
    assert r.stderr == error_line(
        "--plot needs matplotlib, which is not installed", "pip install 'marco-gguf[plots]' (or pip install matplotlib)"
    )


# --- inspect (issue 26 item 5) ---

SUMMARY = [  # (reason, spec, preset, row label, value)
    (
        "the file type appeared only as a number in --json",
        SMALL,
        "q4_k_m",
        "file type",
        "Q4_K_M (general.file_type 15)",
    ),
    ("a second type, named by llama.cpp's enum", SMALL, "q8_0", "file type", "Q8_0 (general.file_type 7)"),
    (
        "experts read '16 of 256': the count of the expert width",
        SMALL,
        "q8_0",
        "experts",
        "4 of 16 used per token, each 256 wide",
    ),
    (
        "a width unlike the count (Nano's 232 experts are 384 wide)",
        Spec(experts=32, top_k=8, expert_ff=128),
        "q8_0",
        "experts",
        "8 of 32 used per token, each 128 wide",
    ),
]


def rows(stdout: str) -> dict[str, str]:
    """inspect's label/value rows (a wrapped value joined back)."""
    out: dict[str, str] = {}
    last = None
    for line in stdout.splitlines()[1:]:
        if not line.strip() or line.startswith(("tensor groups", "┏", "✗")):
            break
        m = re.match(r"(\S+(?: \S+)*?)\s{2,}(.*)$", line.rstrip())
        if m:
            label, value = m.group(1), m.group(2)
            out[label], last = value, label
        elif last is not None:
            out[last] += " " + line.strip()
    return out


@pytest.mark.parametrize("reason,spec,preset,label,value", SUMMARY, ids=[s[0] for s in SUMMARY])
def test_inspect_summary_rows(reason, spec, preset, label, value, converted):
    proc = cli("inspect", str(converted(spec, preset).path))
    assert proc.returncode == 0, proc.stderr
    assert rows(proc.stdout)[label] == value


def test_inspect_shows_what_a_pruned_file_kept(converted, tmp_path):
    """Reason: a pruned file showed its count as if whole and hid its marco.prune.* keys."""
    body, _ = read_text(None)
    text = tmp_path / "calib.txt"
    text.write_text(body[:4000], encoding="utf-8")
    source = converted(SMALL, "f32").path
    expert_usage(source, [text], ctx=64, usage=tmp_path / "u.json")
    out = prune(source, keep=6, usage=tmp_path / "u.json", outfile=tmp_path / "pruned.gguf").path
    proc = cli("inspect", str(out))
    assert proc.returncode == 0, proc.stderr
    got = rows(proc.stdout)
    kept = read_info(out).marco["marco.prune.kept_experts"]
    assert got["experts"] == "4 of 6 used per token (pruned from 16; marco.prune.* below), each 256 wide"
    assert got["marco.prune.method"] == "reap" and got["marco.prune.source_expert_count"] == "16"
    assert got["marco.prune.kept_experts"] == f"12 values: {', '.join(map(str, kept[:8]))}, ..."
    assert len(got["marco.prune.source_router_sha256"].replace(" ", "")) == 64  # whole, not cut with an ellipsis


def test_context_beyond_the_model_gets_a_note(converted):
    """Reason: `--ctx 1000000` printed 112 GiB without a word that the model's context is 32,768."""
    path = converted(SMALL, "q8_0").path  # the test models' config says 4,096 (Marco's: 32,768)
    note = (
        "--ctx 5,000 is beyond the model's context length of 4,096 tokens (qwen3moe.context_length): "
        "positions past it are outside what it was trained on"
    )
    proc = cli("inspect", str(path), "--ctx", "5000")
    assert proc.returncode == 0 and proc.stderr == f"note: {note}\n"
    assert json.loads(cli("inspect", str(path), "--ctx", "5000", "--json").stdout)["context_note"] == note
    within = cli("inspect", str(path), "--ctx", "4096")
    assert (
        within.stderr == ""
        and json.loads(cli("inspect", str(path), "--ctx", "4096", "--json").stdout)["context_note"] is None
    )


def test_chat_notes_a_context_beyond_the_model(converted):
    """Reason: `chat --ctx 40000` was accepted beyond the model's 32,768 without a note."""
    proc = cli("chat", str(converted(SMALL, "q8_0").path), "--ctx", "5000", "--prompt", "hi", "-n", "2", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("note: --ctx 5,000 is beyond the model's context length of 4,096 tokens")


PROBE = """
import sys
from marco_gguf.llama.engine import Engine
Engine(sys.argv[1], ctx=int(sys.argv[2]), parallel=1, threads=1).close()
"""


def llama_buffers(path: Path, n_ctx: int) -> float:
    """llama.cpp's own compute + output buffer sizes (MiB, as its log prints them) for chat's context."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(n_ctx)],
        capture_output=True,
        text=True,
        env={**os.environ, "MARCO_GGUF_DEBUG": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = re.findall(r"CPU +(?:compute|output) buffer size = +([\d.]+) MiB", proc.stderr)
    assert len(sizes) == 2, proc.stderr[-2000:]
    return sum(map(float, sizes))


BUFFERS = [  # (reason, spec, n_ctx, tolerance as a share): llama.cpp prints MiB to 0.01
    ("Marco's vocabulary: the output logits are the peak, flat in n_ctx", Spec(vocab="qwen3"), 512, 0.0),
    ("... and still at 32,768 (the estimate was 593.50 MiB, twice this)", Spec(vocab="qwen3"), 32768, 0.0),
    ("a context under one batch shrinks the micro-batch", Spec(vocab="qwen3"), 16, 0.0),
    ("small vocabulary: the KQ mask and the experts' activations are the peak", SMALL, 4096, 0.05),
    ("... which grows with n_ctx", SMALL, 16384, 0.05),
    ("wider routed experts", Spec(dtype="f32", expert_ff=512), 512, 0.05),
]


@pytest.mark.parametrize("reason,spec,n_ctx,tolerance", BUFFERS, ids=[b[0] for b in BUFFERS])
def test_compute_estimate_matches_llama_cpp(reason, spec, n_ctx, tolerance, converted):
    path = converted(spec, "q8_0").path
    ours = read_info(path).ram_needed(n_ctx)["compute"] / 2**20
    theirs = llama_buffers(path, n_ctx)
    assert abs(ours - theirs) <= max(0.015, tolerance * theirs), (ours, theirs)


# --- errors that name the real cause (issue 26 item 6) ---


@pytest.fixture
def not_ggufs(tmp_path):
    (tmp_path / "folder.gguf").mkdir()
    (tmp_path / "empty.gguf").write_bytes(b"")
    return tmp_path


WRONG_CAUSE = [  # (reason, command, name, message, hint)
    (
        "a folder was 'no such file'",
        "inspect",
        "folder.gguf",
        "is a folder, not a GGUF file",
        "give the .gguf file inside it",
    ),
    ("... in chat", "chat", "folder.gguf", "is a folder, not a GGUF file", "give the .gguf file inside it"),
    ("... in bench", "bench", "folder.gguf", "is a folder, not a GGUF file", "give the .gguf file inside it"),
    (
        "an empty file was 'starts with b'''",
        "inspect",
        "empty.gguf",
        "is empty (0 bytes), not a GGUF file",
        "the copy or download failed: make it again",
    ),
    (
        "... in chat",
        "chat",
        "empty.gguf",
        "is empty (0 bytes), not a GGUF file",
        "the copy or download failed: make it again",
    ),
]


@pytest.mark.parametrize("reason,command,name,message,hint", WRONG_CAUSE, ids=[w[0] for w in WRONG_CAUSE])
def test_errors_name_the_real_cause(reason, command, name, message, hint, not_ggufs):
    proc = cli(command, str(not_ggufs / name))
    assert proc.returncode == 1 and proc.stderr == error_line(f"{not_ggufs / name}: {message}", hint)


def test_a_file_as_checkpoint_is_not_a_folder(converted):
    """Reason: a missing folder and a file were both 'not a folder'; now only the file is."""
    path = converted(SMALL, "q8_0").path
    proc = cli("convert", str(path))
    assert proc.returncode == 1
    assert proc.stderr == error_line(
        f"{path}: is a file, not a folder", "SOURCE must be a Hugging Face checkpoint folder"
    )


# --- verify (issue 26 item 7) ---


def test_verify_against_another_model_is_one_line(checkpoint, converted):
    """Reason: another model's checkpoint printed 402 lines (every tensor, the whole chat template)."""
    path, other = converted(SMALL, "q8_0").path, checkpoint(Spec(hidden=512, experts=32))
    proc = cli("verify", str(path), "--source", str(other), "-q")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == error_line(
        f"{path.name} and {other} are different models: hidden size 256 vs 512, experts 16 vs 32 (file vs checkpoint)",
        "give --source the checkpoint this file was converted from",
    )


def test_verify_summary_says_failed_and_shows_every_check(checkpoint, converted, tmp_path):
    """Reason: the summary said 'verified' when it failed and left metadata and loading to --json."""
    src = tmp_path / "src"
    shutil.copytree(checkpoint(SMALL), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 10000.0
    (src / "config.json").write_text(json.dumps(cfg))
    path = converted(SMALL, "q8_0").path
    proc = cli("verify", str(path), "--source", str(src), "-q")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == f"verification failed: {path.name} against {src}"
    got = rows(proc.stdout)
    n_keys = json.loads(cli("verify", str(path), "--source", str(src), "--json").stdout)["metadata_checked"]
    assert got["metadata"] == f"1 of {n_keys} keys differ from the source" and n_keys > 20
    assert got["llama.cpp"] == "loads it" and got["result"] == "1 problem(s)"
    assert lines[-1] == "✗ qwen3moe.rope.freq_base: file has 1000000.0, source implies 10000.0"
    good = cli("verify", str(path), "--source", str(checkpoint(SMALL)), "-q")
    assert good.returncode == 0 and good.stdout.splitlines()[0] == f"verified {path.name} against {checkpoint(SMALL)}"
    assert rows(good.stdout)["metadata"] == f"{n_keys} keys match the source"


def test_piped_progress_prints_a_line_now_and_then(monkeypatch, capsys):
    """Reason: `verify` piped into a log printed nothing for 25 s; a pipe now gets a line every PIPED_EVERY s."""
    monkeypatch.setattr(ui, "PIPED_EVERY", 0.0)
    with ui.progress_bar("verifying", quiet=False) as progress:
        assert progress is not None
        progress(ProgressEvent(50, 200, "parameters", "blk.0.ffn_up_exps.weight"))
    line = capsys.readouterr().err
    assert re.fullmatch(
        r"verifying: 50/200 parameters( at [\d,.]+ \S+/s)? \(25%\) · blk\.0\.ffn_up_exps\.weight\n", line
    )
    with ui.progress_bar("verifying", quiet=True) as progress:
        assert progress is None


# --- options (issue 26 item 12, issue 21) ---


def test_shared_options_are_declared_once():
    """Reason: --json was declared 11 times and --threads 8 times with five help texts."""
    declared: dict[str, list[str]] = {}
    for module in sorted(Path(ui.__file__).parent.glob("*.py")):
        for opt in re.findall(r'typer\.Option\(\s*"(--json|--threads|--quiet|--ctx)"', module.read_text()):
            declared.setdefault(opt, []).append(module.name)
    # bench's --threads takes a list of counts to compare, as llama-bench's -t: an option of its own
    assert declared == {
        "--json": ["options.py"],
        "--threads": ["bench.py", "options.py"],
        "--quiet": ["options.py"],
        "--ctx": ["options.py", "options.py"],  # a context, and a chunk of text (llama-perplexity's -c)
    }


HELP = [  # (reason, args, a line it must show, what no line may show)
    ("-h was rejected", ["inspect", "-h"], r"--json\s+Print the result as JSON", "<bool>"),
    (
        "flags were shown as `<bool>`, as if they took a value",
        ["verify", "--help"],
        r"--quiet\s+-q\s+No progress",
        "<bool>",
    ),
    ("--text had -f in experts/imatrix but not quality", ["quality", "-h"], r"--text\s+-f\s+<path>", "<bool>"),
]


@pytest.mark.parametrize("reason,args,shown,hidden", HELP, ids=[h[0] for h in HELP])
def test_help(reason, args, shown, hidden):
    proc = cli(*args, env={"COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    assert re.search(shown, proc.stdout) and hidden not in proc.stdout


CTX_MIN = [  # (reason, command line): one --ctx minimum, 16 (llama-imatrix's smallest counted batch)
    ("experts --ctx 1 ran one token per chunk", ["experts", "x.gguf", "--ctx", "8"]),
    ("quality's minimum was 4", ["quality", "x.gguf", "--ref", "y.gguf", "--text", "t.txt", "-c", "8"]),
    ("inspect's minimum was 1", ["inspect", "x.gguf", "--ctx", "8"]),
    ("chat's was 16 already: the same now for all", ["chat", "x.gguf", "--ctx", "8"]),
    ("serve", ["serve", "x.gguf", "--ctx", "8"]),
    ("imatrix", ["imatrix", "x.gguf", "-o", "x.imatrix", "--ctx", "8"]),
]


@pytest.mark.parametrize("reason,args", CTX_MIN, ids=[c[0] for c in CTX_MIN])
def test_one_ctx_minimum(reason, args):
    proc = cli(*args, env={"COLUMNS": "200"})
    assert proc.returncode == 2 and "Input should be greater than or equal to 16" in proc.stderr


def test_tensor_type_that_matches_nothing_is_refused(checkpoint, tmp_path):
    """Reason: `--tensor-type nomatch=Q4_K` was ignored without a word."""
    proc = cli("convert", str(checkpoint(SMALL)), "--outdir", str(tmp_path), "--tensor-type", "nomatch=Q4_K")
    assert proc.returncode == 1 and list(tmp_path.iterdir()) == []
    assert proc.stderr == error_line(
        "--tensor-type nomatch=Q4_K: the pattern 'nomatch' matches no tensor of this model",
        "tensors are named like blk.0.ffn_down_exps.weight or token_embd.weight (marco-gguf inspect FILE lists them)",
    )


# --- sizes (issue 26 item 13): binary units, as llama.cpp's tools print them ---

SIZES = [  # (reason, bytes, shown)
    ("under 1 KiB: whole bytes", 1023, "1,023 B"),
    ("1 KiB", 1024, "1.00 KiB"),
    ("llama-bench's GiB: 2**30", 2**30, "1.00 GiB"),
    ("Nano Q4_K_M's size, as llama.cpp's loader prints it", 5_153_960_755, "4.80 GiB"),
    ("TiB at the top", 3 * 2**40, "3.00 TiB"),
]


@pytest.mark.parametrize("reason,n,shown", SIZES, ids=[s[0] for s in SIZES])
def test_human_bytes(reason, n, shown):
    assert human_bytes(n) == shown


def test_experts_legend_is_one_line(converted, tmp_path):
    """Reason: the legend was each table's caption, wrapped into the table's 20-column width."""
    body, _ = read_text(None)
    text = tmp_path / "calib.txt"
    text.write_text(body[:4000], encoding="utf-8")
    proc = cli("experts", str(converted(SMALL, "f32").path), "--text", str(text), "-c", "64")
    assert proc.returncode == 0, proc.stderr
    assert "50 / 90 / 99 %: the experts carrying that share of the routing mass" in proc.stdout.splitlines()


def test_verify_prints_shapes_in_ggml_order(checkpoint, converted, tmp_path):
    """Reason: verify printed shapes in PyTorch's order where inspect prints ggml's (ne)."""
    path = tmp_path / "x.gguf"
    shutil.copy(converted(SMALL, "q8_0").path, path)
    data = bytearray(path.read_bytes())
    # the last matrix, blk.1.ffn_down_exps (ne [ff 256, hidden 256, experts 16]), made to hold 8 experts; the
    # tensor after it (output_norm, 1-D) moved up to follow, so the header stays consistent and the keys say 16
    down, norm = b"blk.1.ffn_down_exps.weight", b"output_norm.weight"
    at = data.index(down) + len(down)
    assert struct.unpack_from("<IQQQIQ", data, at)[:4] == (3, 256, 256, 16)
    struct.pack_into("<Q", data, at + 20, 8)
    offset = struct.unpack_from("<Q", data, at + 32)[0]
    half = 8 * 256 * 256 // 32 * 34  # Q8_0: 34 bytes per 32 weights
    struct.pack_into("<Q", data, data.index(norm) + len(norm) + 16, offset + half)
    path.write_bytes(bytes(data))
    proc = cli("verify", str(path), "--source", str(checkpoint(SMALL)), "-q")
    assert proc.returncode == 1, proc.stderr
    line = "✗ blk.1.ffn_down_exps.weight: file has ne [256, 256, 8], source implies ne [256, 256, 16]"
    assert line in proc.stdout.splitlines()


def test_no_markup_is_written_for_a_console_that_reads_none():
    """Reason: the consoles run with markup off, so `[dim]...[/dim]` or rich.markup.escape() would print
    brackets and backslashes to the user (upcycle and the plan table did, before this test)."""
    found = [
        f"{m.name}: {hit}"
        for m in sorted(Path(ui.__file__).parent.glob("*.py"))
        for hit in re.findall(r"rich\.markup|\[/?(?:bold|dim|italic|red|green|yellow)\]", m.read_text())
    ]
    assert found == []
