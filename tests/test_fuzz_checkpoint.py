"""Seeded fuzzing of checkpoint reading: every damaged checkpoint is refused with a typed error and leaves
nothing behind, or converts to exactly the undamaged file's tensors (see tests/fuzzing.py)."""

from __future__ import annotations

import shutil

import pytest
from checkpoints import Spec
from fuzzing import FAMILIES, run_case, tensor_digests

CASES_PER_FAMILY = 40  # 320 cases, about 30 s on 2 cores; benchmarks/fuzz_campaign.py runs thousands


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_damaged_checkpoint_is_refused_or_harmless(family, checkpoint, converted, tmp_path):
    good = checkpoint(Spec())
    baseline = tensor_digests(converted(Spec(), "q8_0").path)
    bad = []
    for i in range(CASES_PER_FAMILY):
        seed = FAMILIES.index(family) * 1_000_000 + i
        case = run_case(seed, family, good, baseline, tmp_path)
        if case.outcome not in ("refused", "harmless"):
            bad.append(f"seed {case.seed} [{case.outcome}] {case.what}: {case.detail}")
        shutil.rmtree(tmp_path / f"case-{seed}")
    assert not bad, "\n".join(bad)
