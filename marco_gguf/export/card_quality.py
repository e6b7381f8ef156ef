"""The model card's "Measured quality" section: figures from `quality --json` results, never typed in.

Each result must describe a file of the folder as it is now (same name and size), so a card cannot
show numbers measured on another file or on an earlier conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from marco_gguf.base.errors import ExportError
from marco_gguf.measure.quality import Estimate, QualityReport, load_report

HINT = "measure it again: marco-gguf quality FILE --ref REF --text TEXT --json > q.json"


def load_reports(paths: Sequence[str | Path], sizes: dict[str, int]) -> list[QualityReport]:
    """Read each result and check that every file it measured is in the folder (`sizes`: name -> bytes)."""
    reports = []
    for p in paths:
        report = load_report(p)
        for r in report.results:
            name = Path(r.path).name
            if name not in sizes:
                raise ExportError(f"{p}: measures {name}, which is not among the folder's files", HINT)
            if sizes[name] != r.size_bytes:
                raise ExportError(
                    f"{p}: measured {name} at {r.size_bytes:,} bytes, the file now has {sizes[name]:,}", HINT
                )
        reports.append(report)
    return reports


def _pm(e: Estimate, digits: int, scale: float = 1.0, unit: str = "") -> str:
    return f"{e.value * scale:.{digits}f} ± {e.stderr * scale:.{digits}f}{unit}"


def quality_section(reports: Sequence[QualityReport]) -> list[str]:
    """Markdown lines: one table per measurement (a text and a reference), rows in the result's order."""
    if not reports:
        return []
    lines = [
        "## Measured quality",
        "",
        "Measured with `marco-gguf quality`, which computes what llama.cpp's `llama-perplexity "
        "--kl-divergence` does: perplexity (lower is better), the mean KL divergence of each file's "
        "next-token distribution from the reference's (0 = identical), and how often both pick the same "
        "most likely token.",
        "",
    ]
    for rep in reports:
        ref = Path(rep.ref).name
        lines += [
            f"On `{Path(rep.text).name}` ({rep.scored_tokens:,} tokens scored: the second half of "
            f"{rep.chunks} chunks of {rep.n_ctx}), against `{ref}`:",
            "",
            "| Filename | Bits/weight | PPL | ln(PPL/PPL(ref)) | Mean KLD | 99 % KLD | Same top p |",
            "|---|---|---|---|---|---|---|",
            f"| {ref} | {rep.ref_bits_per_weight:.2f} | {_pm(rep.ref_ppl, 4)} | reference | | | |",
        ]
        lines += [
            f"| {r.name} | {r.bits_per_weight:.2f} | {_pm(r.ppl, 4)} | {_pm(r.ln_ppl_ratio, 5)} | "
            f"{_pm(r.kld, 6)} | {r.kld_distribution['99']:.6f} | {_pm(r.same_top_p, 2, 100, ' %')} |"
            for r in rep.results
        ]
        lines.append("")
    return lines
