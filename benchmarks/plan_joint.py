"""Is one correction by group enough? The summed estimate against each group's KLD noised at once, before and
after `convert` corrects the gains by group (quant/joint.py).

    python benchmarks/plan_sensitivity.py --workdir W      # first: the plans, and the caches they leave
    python benchmarks/plan_joint.py --workdir W [--at q3_k_m,q4_k_s]     # default: all 7 sizes, ~3 minutes

For each budget, the plan plan_sensitivity.py made (its file, and the gains and group caches in
W/quality/sensitivity). The first plan's groups (the summary's, from the cache) are what the correction
used. Then llama.cpp runs the calibration chunk with each group of the FINAL plan noised at once, each
tensor at its planned type's measured error (quant/sensitivity.py's Passes, as the library does): the tied
embedding, all the rest, and the rest in three bands of layers, each set against the estimate from the
corrected gains. Were one correction enough, every ratio would be near 1. Nothing is planned or scored here.
Writes benchmarks/plan_joint.json and plan_joint.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from plan_sensitivity import DEFAULT_WORK, SIZES

from marco_gguf.quant.joint import REST, Group, corrected, groups
from marco_gguf.quant.sensitivity import Passes

HERE = Path(__file__).parent
BANDS = ((0, 9), (10, 19), (20, 29))


def layer(name: str) -> int:
    return int(name.split(".")[1])


def with_bands(names: list[str]) -> dict[str, list[str]]:
    out = groups(names)
    return out | {f"layers {a}-{b}": [n for n in out[REST] if a <= layer(n) <= b] for a, b in BANDS}


def residual(passes: Passes, plan: Path, gains: dict, errors: dict) -> list[dict]:
    """Per group of the final plan: the corrected estimate and the KLD measured with its noise at once."""
    types = {t.name: Q(int(t.tensor_type)) for t in GGUFReader(plan).tensors if t.name in gains}
    out = []
    for label, names in with_bands(sorted(types)).items():
        kld = passes.kld({n: (types[n], errors[n][types[n].name]) for n in names})
        out.append(Group(label, len(names), sum(gains[n] * errors[n][types[n].name] for n in names), kld).as_dict())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--at", default=",".join(SIZES))
    args = ap.parse_args()
    work = args.workdir
    made = {r["label"]: r for r in json.loads((HERE / "proxy_plans_sensitivity.json").read_text())["rows"]}
    folder = work / "quality" / "sensitivity"
    [gains_file] = folder.glob("*.sensitivity-*.json")
    [measure_file] = folder.glob("*.measure-*.json")
    gains = {n: k / e for n, (k, e) in json.loads(gains_file.read_text())["tensors"].items()}
    errors = json.loads(measure_file.read_text())["errors"]
    rows = []
    with Passes(work / "quality" / "marco" / "checkpoint-Q8_0.gguf", threads=2) as passes:
        for label in args.at.split(","):
            assert label in SIZES, label
            r = made[f"plan at {label}"]
            first = tuple(Group(**{k: v for k, v in g.items() if k != "ratio"}) for g in r["plan"]["groups"])
            final = residual(passes, Path(r["path"]), corrected(gains, first), errors)
            embd = {t.name: t.tensor_type.name for t in GGUFReader(r["path"]).tensors}["token_embd.weight"]
            rows.append({"label": label, "first": [g.as_dict() for g in first], "final": final, "embd": embd})
            print(table(rows[-1:]), flush=True)
    (HERE / "plan_joint.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (HERE / "plan_joint.md").write_text(summary(rows) + "\n" + table(rows))


def summary(rows: list[dict]) -> str:
    """One row a budget: the ratios the correction used, and what is left at the final plan's types."""
    lines = [
        "| budget | first: token_embd | first: the rest | final: token_embd's type | final: token_embd "
        "| final: the rest | final: bands |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first, final = ({g["name"]: g["ratio"] for g in r[k]} for k in ("first", "final"))
        bands = " / ".join(f"{final[f'layers {a}-{b}']:.2f}" for a, b in BANDS)
        lines.append(
            f"| {r['label'].upper()} | {first['token_embd']:.2f} | {first[REST]:.3f} | {r['embd']} "
            f"| {final['token_embd']:.2f} | {final[REST]:.2f} | {bands} |"
        )
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    lines = [
        "| budget | plan | group | tensors | estimated (sum of gain x error) | measured at once | measured / estimated |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for which, label in (("first", "first (summed gains)"), ("final", "final (gains corrected)")):
            for g in r[which]:
                lines.append(
                    f"| {r['label']} | {label} | {g['name']} | {g['tensors']} | {g['estimated']:.4f} "
                    f"| {g['measured']:.4f} | {g['ratio']:.3f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
