"""Model cards: every figure in the table is what gguf-py's GGUFReader reads from the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import Spec
from gguf import GGUFReader, LlamaFileType
from model_files import card, variant

from marco_gguf import convert
from marco_gguf.base.errors import ExportError
from marco_gguf.export import write_card

SOURCE = "AIDC-AI/Marco-Mini-Instruct"
FILES = [  # (preset, quant type in the table, general.file_type)
    ("q8_0", "Q8_0", LlamaFileType.MOSTLY_Q8_0),
    ("f16", "F16", LlamaFileType.MOSTLY_F16),
    ("q4_k_m", "Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M),
]


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory) -> Path:
    """Two conversions of a checkpoint whose model card names its source, license and languages."""
    root = tmp_path_factory.mktemp("card")
    ckpt = variant(
        checkpoint(Spec()),
        root / "src" / "Marco-Test-Instruct",
        readme=card(license="apache-2.0", language=["en", "zh"], base_model=SOURCE),
    )
    out = root / "Marco-Test-Instruct-GGUF"
    out.mkdir()
    for preset, _, _ in FILES:
        convert(ckpt, preset=preset, outdir=out, threads=2)
    return out


def read_back(path: Path) -> tuple[int, float, str]:
    """(general.file_type, bits per weight, the types of its matrices) straight from the file, by gguf-py."""
    r = GGUFReader(path)
    n_bytes = sum(int(t.n_bytes) for t in r.tensors)
    n_weights = sum(int(t.n_elements) for t in r.tensors)
    return int(r.fields["general.file_type"].contents()), 8 * n_bytes / n_weights, types_of(r)


def types_of(r: GGUFReader) -> str:
    """'Q4_K 71 %; Q6_K 17 % (attn_v x12, ...)' from gguf-py's tensors: matrices only, by share of weights."""
    weights: dict[str, int] = {}
    names: dict[str, dict[str, int]] = {}
    for t in r.tensors:
        if len(t.shape) < 2:
            continue
        q = t.tensor_type.name
        weights[q] = weights.get(q, 0) + int(t.n_elements)
        parts = t.name.removesuffix(".weight").split(".")
        key = f"{parts[2]} x" if parts[0] == "blk" else parts[0]
        names.setdefault(q, {})[key] = names.setdefault(q, {}).get(key, 0) + 1
    total = sum(weights.values())
    out = []
    for i, q in enumerate(sorted(weights, key=lambda q: (-weights[q], q))):
        pct = 100 * weights[q] / total
        share = "<0.1 %" if pct < 0.1 else f"{pct:.0f} %" if pct >= 10 and round(pct) < 100 else f"{pct:.1f} %"
        listed = sorted(names[q].items(), key=lambda kv: -kv[1])
        kinds = ", ".join(f"{k}{n}" if k.endswith(" x") else k for k, n in listed)
        out.append(f"{q} {share}" + (f" ({kinds})" if i else ""))
    return "; ".join(out)


def test_table_rows_are_read_from_the_files(folder):
    text = write_card(folder).path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    expected = []
    for _, quant, file_type in FILES:
        path = folder / f"Marco-Test-Instruct-{quant}.gguf"
        got_type, bpw, types = read_back(path)
        assert got_type == file_type
        expected.append(
            (
                path.stat().st_size,
                f"| [{path.name}](./{path.name}) | {quant} | "
                f"{path.stat().st_size / 2**20:.2f} MiB | {bpw:.2f} | {types} |",  # binary units, as llama.cpp prints sizes
            )
        )
    assert rows == [row for _, row in sorted(expected, reverse=True)]  # one per file, largest first


def test_card_names_source_license_prompt_format_and_runners(folder):
    text = write_card(folder).path.read_text()
    assert text.startswith(f"---\nbase_model: {SOURCE}\nlicense: apache-2.0\nlanguage:\n- en\n- zh\n")
    assert f"- **Source model**: [{SOURCE}](https://huggingface.co/{SOURCE})" in text
    assert "- **License**: apache-2.0" in text
    assert (
        "```\n<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
        "<|im_start|>assistant\n```"
    ) in text  # rendered from the embedded template
    for name in sorted(p.name for p in folder.glob("*.gguf")):
        for command in (
            f"marco-gguf chat {name}",
            f"marco-gguf bench {name}",
            f"llama-cli -m {name}",
            f"marco-gguf export ollama {name}",
            "ollama create marco-test-instruct-",
            f"lms import {name} --user-repo marco-gguf/",
        ):
            assert command in text, command


def test_rewrites_its_own_card_but_not_someone_elses(folder, tmp_path):
    first = write_card(folder).path.read_text()
    assert write_card(folder).path.read_text() == first  # ours: rewritten, same content
    other = tmp_path / "theirs"
    other.mkdir()
    os.link(next(folder.glob("*.gguf")), other / "model-Q8_0.gguf")
    (other / "README.md").write_text("# my notes\n")
    with pytest.raises(ExportError, match="was not written by marco-gguf"):
        write_card(other)
    assert (other / "README.md").read_text() == "# my notes\n"
    assert write_card(other, force=True).rows[0].filename == "model-Q8_0.gguf"


def test_a_folder_without_ggufs_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"no .gguf files"):
        write_card(tmp_path)


def test_cli_card(folder):
    proc = subprocess.run([sys.executable, "-m", "marco_gguf", "card", str(folder)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {folder / 'README.md'}" in proc.stdout and "Marco-Test-Instruct-Q8_0.gguf" in proc.stdout


DESCRIPTIONS = [  # (reason, spec, preset, what its row says): every claim from the file, none from its preset
    ("Q8_0: the router stays F32, as llama.cpp keeps it", Spec(), "q8_0", "Q8_0 99.9 %; F32 0.1 % (ffn_gate_inp x2)"),
    (
        "Q4_K_M, 256-wide experts: Q6_K where the preset puts it",
        Spec(),
        "q4_k_m",
        "Q4_K 82 %; Q6_K 18 % (token_embd, attn_v x1, ffn_down_exps x1); F32 0.1 % (ffn_gate_inp x2)",
    ),
    (
        "Q4_K_M, 384-wide experts (Marco-Nano's): ffn_down_exps cannot take K-quants; the preset's text said Q6_K",
        Spec(expert_ff=384),
        "q4_k_m",
        "Q4_K 67 %; Q5_0 16 % (ffn_down_exps x1); Q8_0 16 % (ffn_down_exps x1); Q6_K 2.0 % (token_embd, attn_v x1); "
        "F32 <0.1 % (ffn_gate_inp x2)",
    ),
]


@pytest.mark.parametrize("reason,spec,preset,description", DESCRIPTIONS, ids=[d[0] for d in DESCRIPTIONS])
def test_each_row_describes_its_own_file(reason, spec, preset, description, converted, tmp_path):
    path = converted(spec, preset).path
    os.link(path, tmp_path / path.name)
    (row,) = write_card(tmp_path).rows
    assert (row.description, read_back(path)[1]) == (description, pytest.approx(row.bits_per_weight))
    assert row.description == read_back(path)[2]  # gguf-py reads the same types, shares and tensors


@pytest.fixture
def with_pruned(folder, tmp_path, text_file):
    """The fixture folder's files (linked) and one of them pruned to 8 of its 16 experts."""
    from marco_gguf.experts.prune import prune
    from marco_gguf.experts.usage import expert_usage

    out = tmp_path / "Marco-Test-Instruct-GGUF"
    out.mkdir()
    for f in folder.glob("*.gguf"):
        os.link(f, out / f.name)
    source = out / "Marco-Test-Instruct-Q8_0.gguf"
    usage = tmp_path / "usage.json"
    expert_usage(source, [text_file], ctx=64, usage=usage)
    prune(source, keep=8, usage=usage, outfile=out / "Marco-Test-Instruct-pruned8-Q8_0.gguf")
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from marco_gguf.quant.imatrix import read_text

    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(read_text(None)[0][:3000], encoding="utf-8")
    return path


def test_a_pruned_file_is_described_as_pruned(with_pruned):
    r = write_card(with_pruned)
    text = r.path.read_text()
    assert "- **Architecture**: qwen3moe, 4 of 16 experts active per token\n" in text  # the whole model's
    assert (
        "- **Pruned**: 1 of 4 files is pruned to fewer experts per layer (Marco-Test-Instruct-pruned8-Q8_0.gguf "
        "keeps 8 of 16): a smaller model that answers differently from the whole one; measure it (marco-gguf "
        "quality) before trusting it\n"
    ) in text
    pruned = next(row for row in r.rows if row.filename == "Marco-Test-Instruct-pruned8-Q8_0.gguf")
    assert (pruned.experts, pruned.pruned_from) == (8, 16)
    assert pruned.description.startswith("Pruned: 8 of 16 experts kept in every layer (reap), 4 per token. Q8_0 ")
    assert all(row.pruned_from is None for row in r.rows if row is not pruned)


MIXED = [  # (reason, the other model's spec, how it differs in the message)
    ("a deeper model", Spec(layers=3), "3 layers"),
    ("a model with another vocabulary", Spec(vocab="qwen3"), "151,936 tokens"),
]


@pytest.mark.parametrize("reason,other,differs", MIXED, ids=[m[0] for m in MIXED])
def test_a_folder_of_two_models_is_refused(reason, other, differs, folder, converted, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    os.link(folder / "Marco-Test-Instruct-Q8_0.gguf", mixed / "a-Q8_0.gguf")
    os.link(converted(other, "q8_0").path, mixed / "b-Q8_0.gguf")
    with pytest.raises(ExportError) as e:
        write_card(mixed)
    assert e.value.message.startswith(f"{mixed}: holds files of 2 different models: a-Q8_0.gguf (")
    assert "; b-Q8_0.gguf (" in e.value.message and differs in e.value.message.split("b-Q8_0.gguf")[1]
    assert (
        e.value.hint == "a card describes one model: put each model's files in a folder of its own and run card on each"
    )
    assert sorted(p.name for p in mixed.iterdir()) == ["a-Q8_0.gguf", "b-Q8_0.gguf"]  # no README written


def test_cli_table_keeps_file_names_whole_and_shows_pruning(with_pruned):
    from typer.testing import CliRunner

    from marco_gguf.cli.app import app

    r = CliRunner().invoke(app, ["card", str(with_pruned)], terminal_width=60)
    assert r.exit_code == 0, r.output
    cells = {
        line.split("│")[1].strip(): line.split("│")[-2].strip() for line in r.stdout.splitlines() if ".gguf" in line
    }
    assert cells == {
        "Marco-Test-Instruct-F16.gguf": "16",
        "Marco-Test-Instruct-Q8_0.gguf": "16",
        "Marco-Test-Instruct-Q4_K_M.gguf": "16",
        "Marco-Test-Instruct-pruned8-Q8_0.gguf": "8 of 16",  # name whole, never cut at the terminal's edge
    }
