"""`calibrate_convert()`: `convert --calibrate` — a Q8_0 of the source, its importance matrix, then the quant.

The calibration GGUF (unless the caller gives one) and the imatrix (unless kept) live in a hidden temporary
folder beside the output, so they are on the disk that has room for it; the folder goes away on success,
error and Ctrl-C alike. The final file is written by `convert()` with the imatrix, so it is named and
marked as an importance-matrix quant (`<model>-i1-Q4_K_M.gguf`, `quantize.imatrix.*` keys). With a size
target the plan is also weighed by each tensor's sensitivity measured on the same calibration GGUF (unless
`sensitivity=` names another): on the proxy those plans are never worse than the best fixed preset that fits,
the unweighed ones were at 4 of 7 sizes (BENCHMARKS.md, "Plans weighed by measured sensitivity").
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marco_gguf.base.errors import OutputError
from marco_gguf.base.files import check_writable, make_folders, remove_folders
from marco_gguf.base.progress import Progress
from marco_gguf.convert import ConvertResult, convert
from marco_gguf.quant.imatrix import ImatrixResult, compute_imatrix

CALIBRATION_PRESET = "q8_0"  # what publishers compute imatrices on: near-lossless, half the size of F16


@dataclass(frozen=True)
class CalibrateResult:
    conversion: ConvertResult
    imatrix: ImatrixResult
    calibration_model: str  # the GGUF the imatrix was computed on ("temporary Q8_0" when made here)
    kept_imatrix: Path | None
    seconds: float

    def as_dict(self) -> dict:
        return {
            "conversion": self.conversion.as_dict(),
            "imatrix": self.imatrix.as_dict(),
            "calibration_model": self.calibration_model,
            "kept_imatrix": str(self.kept_imatrix) if self.kept_imatrix else None,
            "seconds": self.seconds,
        }


def _targeted(options: dict[str, Any]) -> bool:
    return options.get("target_size") is not None or options.get("target_bpw") is not None


def calibrate_convert(
    source: str | Path,
    *,
    text: str | Path | None = None,
    calibration_model: str | Path | None = None,
    keep_imatrix: str | Path | None = None,
    ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    outfile: str | Path | None = None,
    outdir: str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    **convert_options: Any,
) -> CalibrateResult:
    """Convert `source` with an importance matrix computed here over `text` (default: the built-in text)."""
    started = time.perf_counter()
    keep = Path(keep_imatrix) if keep_imatrix is not None else None
    if keep is not None and keep.exists() and not force:
        raise OutputError(f"{keep}: already exists", "pass --force to overwrite it, or choose another --keep-imatrix")
    where = Path(outfile).parent if outfile is not None else Path(outdir or Path.cwd())
    check_writable(where / "scratch", hint="choose another --outdir or --outfile")  # the scratch folder goes there
    if keep is not None:
        check_writable(keep, hint="choose another --keep-imatrix")
    made = make_folders(where)
    scratch = Path(tempfile.mkdtemp(prefix=".marco-calibrate-", dir=where))
    try:
        model = Path(calibration_model) if calibration_model is not None else None
        if model is None:
            model = convert(
                source,
                preset=CALIBRATION_PRESET,
                outfile=scratch / "calibration-Q8_0.gguf",
                threads=threads,
                progress=progress,
                **{k: v for k, v in convert_options.items() if k in ("revision", "name", "lora")},
            ).path
        if _targeted(convert_options) and convert_options.get("sensitivity") is None:
            convert_options = {**convert_options, "sensitivity": model}
        stem = Path(str(source).rstrip("/")).name or "model"
        imatrix_path = keep if keep is not None else scratch / f"{stem}.imatrix.gguf"
        im = compute_imatrix(
            model,
            text=text,
            outfile=imatrix_path,
            ctx=ctx,
            chunks=chunks,
            threads=threads,
            force=force,
            progress=progress,
        )
        label = str(keep) if keep is not None else imatrix_path.name
        result = convert(
            source,
            outfile=outfile,
            outdir=outdir,
            threads=threads,
            force=force,
            progress=progress,
            imatrix=imatrix_path,
            imatrix_label=label,
            **convert_options,
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        remove_folders(made)  # a folder this call created, left empty
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return CalibrateResult(
        result,
        im,
        str(calibration_model) if calibration_model else f"temporary {CALIBRATION_PRESET.upper()}",
        keep,
        time.perf_counter() - started,
    )
