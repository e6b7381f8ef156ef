"""`experts --plot`: one PNG with a layers x experts heat map per text and the text x text similarity matrix.

matplotlib is optional (`pip install 'marco-gguf[plots]'`): checked before any model is run.
"""

from __future__ import annotations

import math
from pathlib import Path

from marco_gguf.base.errors import ExpertsError
from marco_gguf.base.files import write_atomic

INSTALL = "pip install 'marco-gguf[plots]' (or pip install matplotlib)"


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ExpertsError("--plot needs matplotlib, which is not installed", INSTALL) from None


def plot_usage(usage, path: Path, core_mass: float | None = None) -> Path:
    """Heat maps of each text's share of every layer's routing mass per expert, then the similarity matrix."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from marco_gguf.experts.report import CORE_MASS, build_report

    report = build_report(usage, core_mass or CORE_MASS)
    n = len(usage.texts)
    panels = n + (1 if n > 1 else 0)
    cols = min(panels, 2)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4 * rows), squeeze=False)
    for ax, t in zip(axes.flat, usage.texts):
        share = t.weight / t.weight.sum(axis=1, keepdims=True).clip(min=1e-30)
        im = ax.imshow(share, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set(title=f"{t.label}: share of routing mass ({t.tokens:,} tokens)", xlabel="expert", ylabel="layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax)
    if n > 1:
        ax = axes.flat[n]
        im = ax.imshow(report.similarity, vmin=0, vmax=1, cmap="magma")
        ax.set_xticks(range(n), usage.labels, rotation=45, ha="right")
        ax.set_yticks(range(n), usage.labels)
        ax.set_title(f"Jaccard overlap of core experts ({round(100 * report.core_mass)} % of mass), mean over layers")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{report.similarity[i][j]:.2f}", ha="center", va="center", color="grey")
        fig.colorbar(im, ax=ax)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.suptitle(f"{usage.model.file}: {usage.model.experts} experts, {usage.model.experts_per_token} per token")
    fig.tight_layout()
    try:
        write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    except OSError as e:
        raise ExpertsError(f"{path}: cannot write the plot ({e.strerror})", "check the folder and free space") from None
    finally:
        plt.close(fig)
    return Path(path)
