"""Seeded fuzzing of adapter folders: every damaged PEFT adapter is refused with one typed line and nothing
written, or becomes exactly the undamaged adapter's GGUF tensors (or, when the damage changed a field that sets
the scale, a file that differs only where that scale applies). Mutations are tests/fuzzing.py's."""

from __future__ import annotations

import json
import random
import shutil
import traceback

import pytest
from adapters import EXPERTS, Adapter, make_adapter
from checkpoints import Spec
from fuzzing import mutate_json, mutate_safetensors, tensor_digests

from marco_gguf.base.errors import MarcoGGUFError
from marco_gguf.gguf_io.lora_gguf import write_lora_gguf

FAMILIES = ("config", "st-length", "st-bytes", "st-json", "st-size")
CASES_PER_FAMILY = 40  # 200 cases, a few seconds: no base weights are read
SCALE_KEYS = ("lora_alpha", "use_rslora", "alpha_pattern")  # a valid value there is another, valid adapter
ROOTS = [(), ("target_modules",), ("target_parameters",), ("rank_pattern",), ("auto_mapping",)]


def damage(rng: random.Random, folder, family: str) -> str:
    if family == "config":
        path = folder / "adapter_config.json"
        data, what = mutate_json(rng, json.loads(path.read_text()), ROOTS)
        path.write_text(json.dumps(data))
        return f"adapter_config.json: {what}"
    path = folder / "adapter_model.safetensors"
    data, what = mutate_safetensors(rng, family, path.read_bytes())
    path.write_bytes(data)
    return f"adapter_model.safetensors: {what}"


def verdict(seed: int, family: str, good, base, baseline: dict, workdir) -> str | None:
    """None when the case is refused cleanly or harmless; else what went wrong."""
    rng = random.Random(seed)
    folder, out = workdir / "adapter", workdir / "out" / "a.gguf"
    shutil.copytree(good, folder)
    what = damage(rng, folder, family)
    try:
        write_lora_gguf(folder, base=base, outfile=out)
    except MarcoGGUFError as e:
        if "\n" in e.message or out.exists() or any(out.parent.iterdir()):
            return f"{what}: refused untidily: {e.message!r}, left {list(out.parent.iterdir())}"
        return None
    except Exception as e:
        return f"{what}: crash {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    got = tensor_digests(out)
    diff = sorted(k for k in set(got) | set(baseline) if got.get(k) != baseline.get(k))
    if diff and not (family == "config" and any(k in what for k in SCALE_KEYS) and set(got) == set(baseline)):
        return f"{what}: accepted, but tensors differ: {diff[:3]}"
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_damaged_adapter_is_refused_or_harmless(family, checkpoint, tmp_path_factory):
    base = checkpoint(Spec(seed=3))
    good = make_adapter(base, tmp_path_factory.mktemp("good") / "adapter", Adapter(("q_proj", "gate"), EXPERTS))
    baseline = tensor_digests(write_lora_gguf(good, base=base, outfile=tmp_path_factory.mktemp("ref") / "a.gguf").path)
    bad = []
    for i in range(CASES_PER_FAMILY):
        seed = FAMILIES.index(family) * 1_000_000 + i
        workdir = tmp_path_factory.mktemp(f"case-{seed}")
        (workdir / "out").mkdir()
        if (problem := verdict(seed, family, good, base, baseline, workdir)) is not None:
            bad.append(f"seed {seed}: {problem}")
        shutil.rmtree(workdir)
    assert not bad, "\n".join(bad)
