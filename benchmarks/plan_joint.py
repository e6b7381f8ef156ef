"""Do the summed gains misweigh groups of tensors at a plan's own operating point? Measured, then corrected by hand.

    python benchmarks/plan_sensitivity.py --workdir W --at q4_k_s     # first: the gains and the measure cache
    python benchmarks/plan_joint.py --workdir W [--at q3_k_m,q4_k_s] [--chunks 8]

For each budget: the weighed plan (`convert --target-size ... --sensitivity Q8_0`, the caches of
plan_sensitivity.py copied so nothing is measured again). Then llama.cpp runs the calibration chunk with the
noise of every tensor of a group at once, each at its PLANNED type's measured error energy (the embedding's
lookup quantized to its planned type): the tied embedding alone, every other tensor together, and the layers in
three bands. Each group's measured KLD is set against the plan's estimate for it (the sum of gain x error): if
the gains were right for plans, the ratios would be equal. Then, as the correction a planner could make, every
gain of the embedding and of the rest is scaled by its group's ratio (written into a copy of the gains cache)
and the same budget is planned again. Both plans are scored in one `quality` run as plan_sensitivity.py
scores (F32 proxy, eval.txt). Writes benchmarks/plan_joint.json and plan_joint.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from plan_sensitivity import SIZES

from marco_gguf import convert
from marco_gguf.base.errors import PlanError
from marco_gguf.llama.observer import GraphObserver, Node, ObservedModel
from marco_gguf.measure.quality import quality
from marco_gguf.quant.imatrix import read_text, weight_name
from marco_gguf.quant.sensitivity import CTX, Noise, _log_probs

HERE = Path(__file__).parent
EMBD = "token_embd.weight"
BANDS = ((0, 9), (10, 19), (20, 29))


class Joint:
    """Noise on every tensor in `targets` at once (each as Noise puts it on one, seeded alike)."""

    def __init__(self) -> None:
        self.targets: dict[str, tuple[Q, float]] = {}

    def wants(self, node: Node) -> bool:
        ops = ("MUL_MAT", "MUL_MAT_ID", "GET_ROWS")
        return node.op in ops and weight_name(node.arg(0).name) in self.targets

    def take(self, node: Node) -> None:
        name = weight_name(node.arg(0).name)
        kind, energy = self.targets[name]
        if node.op == "GET_ROWS" and kind in (Q.F16, Q.F32):
            return  # no lookup error worth modelling
        one = Noise()
        one.aim(name, kind, energy)
        one.take(node)


def layer(name: str) -> int:
    return int(name.split(".")[1])


def groups(names: list[str]) -> dict[str, list[str]]:
    rest = [n for n in names if n != EMBD]
    out = {"token_embd": [EMBD], "all other tensors": rest}
    out |= {f"layers {a}-{b}": [n for n in rest if a <= layer(n) <= b] for a, b in BANDS}
    return out


def measured(q8: Path, plan: Path, gains: dict, errors: dict) -> dict[str, dict]:
    """Per group: the plan's estimate (sum of gain x error) and the KLD measured with its noise at once."""
    types = {t.name: Q(int(t.tensor_type)) for t in GGUFReader(plan).tensors if t.name in gains}
    joint, out = Joint(), {}
    body, _ = read_text(None, PlanError)
    with ObservedModel(q8, GraphObserver(joint.wants, joint.take), n_ctx=CTX, threads=2) as m:
        tokens = m.tokenize(body)[:CTX]
        ref = _log_probs(m.logits(tokens))
        p = np.exp(ref)
        for label, names in groups(sorted(types)).items():
            joint.targets = {n: (types[n], errors[n][types[n].name]) for n in names}
            kld = float((p * (ref - _log_probs(m.logits(tokens)))).sum(1).mean())
            est = sum(gains[n] * errors[n][types[n].name] for n in names)
            out[label] = {"estimated": est, "measured": kld, "ratio": kld / est}
    out["types"] = {EMBD: types[EMBD].name}
    return out


def plan(work: Path, size: int, folder: Path) -> Path:
    r = convert(
        work / "checkpoint",
        target_size=size,
        outdir=folder,
        threads=2,
        imatrix=work / "quality" / "proxy.imatrix.gguf",
        sensitivity=work / "quality" / "marco" / "checkpoint-Q8_0.gguf",
        force=True,
    )
    assert r.plan is not None and r.plan["gains_measured"] == 0, "the gains must come from the cache"
    print(f"{folder.name}: {r.plan['types']}", file=sys.stderr, flush=True)
    return r.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "proxy-v2" / "steps100")
    ap.add_argument("--at", default="q3_k_m,q4_k_s")
    ap.add_argument("--chunks", type=int, default=8)
    args = ap.parse_args()
    work, rows = args.workdir, []
    caches = work / "quality" / "sensitivity"
    [gains_file] = caches.glob("*.sensitivity-*.json")
    [measure_file] = caches.glob("*.measure-*.json")
    doc = json.loads(gains_file.read_text())
    gains = {n: k / e for n, (k, e) in doc["tensors"].items()}
    errors = json.loads(measure_file.read_text())["errors"]
    q8 = work / "quality" / "marco" / "checkpoint-Q8_0.gguf"
    for label in args.at.split(","):
        folders = {s: work / "quality" / "joint" / f"{label}-{s}" for s in ("summed", "scaled")}
        for f in folders.values():
            f.mkdir(parents=True, exist_ok=True)
            shutil.copy(measure_file, f)
        shutil.copy(gains_file, folders["summed"])
        first = plan(work, SIZES[label], folders["summed"])
        found = measured(q8, first, gains, errors)
        scale = {n: found["token_embd" if n == EMBD else "all other tensors"]["ratio"] for n in gains}
        scaled = doc | {"tensors": {n: [k * scale[n], e] for n, (k, e) in doc["tensors"].items()}}
        (folders["scaled"] / gains_file.name).write_text(json.dumps(scaled))
        second = plan(work, SIZES[label], folders["scaled"])
        types = {t.name: t.tensor_type.name for t in GGUFReader(second).tensors}
        rows.append({"label": label, "groups": found, "paths": [str(first), str(second)], "embd_scaled": types[EMBD]})
    paths = [Path(p) for r in rows for p in r["paths"]]
    report = quality(paths, ref=work / "proxy-F32.gguf", text=work / "eval.txt", chunks=args.chunks).as_dict()
    results = iter(report["results"])
    for r in rows:
        r["quality"] = [next(results), next(results)]
    (HERE / "plan_joint.json").write_text(json.dumps({"rows": rows}, indent=1, default=str) + "\n")
    (HERE / "plan_joint.md").write_text(table(rows))
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = [
        "| budget | group | estimated (sum of gain x error) | measured at once | measured / estimated |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for g, v in r["groups"].items():
            if g != "types":
                lines.append(f"| {r['label']} | {g} | {v['estimated']:.4f} | {v['measured']:.4f} | {v['ratio']:.3f} |")
    lines += ["", "| budget | plan | token_embd | size (bytes) | mean KLD |", "|---|---|---|---|---|"]
    for r in rows:
        for name, q, embd in zip(
            ("gains as measured", "gains scaled by group"), r["quality"], (r["groups"]["types"][EMBD], r["embd_scaled"])
        ):
            kld = q["kld"]
            lines.append(
                f"| {r['label']} | {name} | {embd} | {q['size_bytes']:,} | {kld['value']:.4f} ± {kld['stderr']:.4f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
