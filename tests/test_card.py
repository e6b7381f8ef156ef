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

from marco_gguf import convert, load_preset
from marco_gguf.base.errors import ExportError
from marco_gguf.export import write_card

SOURCE = "AIDC-AI/Marco-Mini-Instruct"
FILES = [  # (preset, quant type in the table, general.file_type)
    ("q8_0", "Q8_0", LlamaFileType.MOSTLY_Q8_0),
    ("f16", "F16", LlamaFileType.MOSTLY_F16),
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


def read_back(path: Path) -> tuple[int, float]:
    """(general.file_type, bits per weight) straight from the file."""
    r = GGUFReader(path)
    n_bytes = sum(int(t.n_bytes) for t in r.tensors)
    n_weights = sum(int(t.n_elements) for t in r.tensors)
    return int(r.fields["general.file_type"].contents()), 8 * n_bytes / n_weights


def test_table_rows_are_read_from_the_files(folder):
    text = write_card(folder).path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    expected = []
    for preset, quant, file_type in FILES:
        path = folder / f"Marco-Test-Instruct-{quant}.gguf"
        got_type, bpw = read_back(path)
        assert got_type == file_type
        expected.append(
            (
                path.stat().st_size,
                f"| [{path.name}](./{path.name}) | {quant} | "
                f"{path.stat().st_size / 2**20:.2f} MiB | {bpw:.2f} | "  # binary units, as llama.cpp prints sizes
                f"{load_preset(preset).description} |",
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
