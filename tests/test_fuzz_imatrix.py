"""Seeded fuzzing of importance-matrix files (llama.cpp's GGUF format and its legacy .dat): every damaged copy
of a good imatrix for the test model is refused with one typed line naming the file, or read into an imatrix
that holds only what one may (see tests/imatrix_fuzzing.py); `convert --imatrix` with a refused file refuses in
one line and writes nothing, and with an accepted one converts."""

from __future__ import annotations

import contextlib
import math
import resource
import shutil
import signal
import struct
import traceback
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from checkpoints import Spec
from gguf_fuzzing import Doc, encode
from imatrix_fuzzing import (
    FAMILIES,
    Dat,
    DatEntry,
    dat_of,
    encode_dat,
    encode_gguf,
    imatrix_problems,
    run_case,
    vector_problems,
)

from marco_gguf import convert
from marco_gguf.arch.qwen3moe import LM_HEAD, lm_head_is_tied, plan_tensors
from marco_gguf.base.errors import ImatrixError, MarcoGGUFError
from marco_gguf.hf.checkpoint import Checkpoint
from marco_gguf.quant.imatrix import compute_imatrix, read_text
from marco_gguf.quant.imatrix_file import Imatrix, read_imatrix
from marco_gguf.quant.importance import load_importance

SPEC = Spec(dtype="f32")  # 2 layers, 16 experts, rows of 256
CTX = 64
CASES_PER_FAMILY = 30  # 390 cases, about 20 s; benchmarks/fuzz_campaign.py imatrix runs thousands
CONVERTED_PER_FAMILY = 2  # accepted files that are also converted with (a full conversion each)


@pytest.fixture(scope="module")
def planned(checkpoint):
    with Checkpoint(checkpoint(SPEC)) as ckpt:
        untied = LM_HEAD in ckpt.tensors and not lm_head_is_tied(ckpt.read_rows, ckpt.tensors)
        return plan_tensors(ckpt.config, ckpt.tensors, keep_lm_head=untied)


@pytest.fixture(scope="module")
def good(converted, tmp_path_factory) -> tuple[Imatrix, Dat, Path]:
    """A real imatrix of the test model (our collector, 2 chunks) with one expert that saw no token (zero sums,
    zero count, as llama-imatrix stores it), in both formats."""
    folder = tmp_path_factory.mktemp("imatrix")
    text = folder / "calib.txt"
    text.write_text(read_text(None)[0][:6000], encoding="utf-8")
    made = compute_imatrix(
        converted(SPEC, "f32").path, text=text, outfile=folder / "made.imatrix.gguf", ctx=CTX, chunks=2, threads=2
    ).path
    imatrix = read_imatrix(made)
    idle = imatrix.entries["blk.1.ffn_down_exps.weight"]
    idle.sums[3 * idle.ne0 : 4 * idle.ne0], idle.counts[3] = 0, 0
    path = encode_gguf(folder / "good.imatrix.gguf", imatrix)
    return read_imatrix(path), dat_of(imatrix, CTX), path


def test_the_undamaged_files_are_accepted_and_agree(good, planned, tmp_path):
    """The .dat as llama-imatrix writes it normalises to the GGUF file's vectors (llama-quantize's load_imatrix:
    stored (sum / count) * ncall over ncall, against sum / count), and both hold valid content."""
    imatrix, dat, gguf_path = good
    dat_path = tmp_path / "good.dat"
    dat_path.write_bytes(encode_dat(dat))
    from_dat = read_imatrix(dat_path)
    assert from_dat.legacy and from_dat.chunk_count == 2 and from_dat.datasets == imatrix.datasets
    assert sorted(from_dat.entries) == sorted(n for n, e in imatrix.entries.items() if e.counts.any())
    for name in from_dat.entries:
        np.testing.assert_allclose(from_dat.importance(name), imatrix.importance(name), rtol=2e-6, err_msg=name)
    assert any((e.counts == 0).any() for e in imatrix.entries.values())  # partial experts are part of the test
    for path in (gguf_path, dat_path):
        assert imatrix_problems(read_imatrix(path)) == []
        assert vector_problems(dict(load_importance(path, planned).vectors), planned) == []


def convert_with(checkpoint, out: Path):
    """Convert with a damaged imatrix: a refused file must refuse in one line with nothing written; an accepted
    one must give a GGUF."""
    accepted = [0]

    def then(path: Path, outcome: str) -> str | None:
        if outcome == "accepted":
            if accepted[0] >= CONVERTED_PER_FAMILY:
                return None
            accepted[0] += 1
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        try:
            result = convert(checkpoint(SPEC), preset="q4_k_m", imatrix=path, outdir=out, threads=2)
        except MarcoGGUFError as e:
            if outcome == "accepted":
                return f"untidy: read and matched, then convert refused: {e}"
            left = list(out.iterdir())
            tidy = "\n" not in str(e) and str(path) in e.message and not left
            return None if tidy else f"untidy: convert refused: {e!s} left {left}"
        except Exception as e:
            return f"crash in convert: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
        if outcome == "refused":
            return "untidy: convert accepted what load_importance refused"
        return None if [p.name for p in out.iterdir()] == [result.path.name] else f"untidy: convert left {out}"

    return then


@contextlib.contextmanager
def bounded(seconds: int, extra_bytes: int) -> Iterator[None]:
    """Within the block, the process's address space may grow by `extra_bytes` at most (a length taken for a size
    and allocated raises MemoryError, reported as a crash) and each `alarm()` gives a case `seconds` (a hang
    raises TimeoutError inside it, reported as a crash too)."""
    status = Path("/proc/self/status").read_text().splitlines()
    vm_size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + extra_bytes, hard))

    def timeout(signum, frame):
        raise TimeoutError(f"the case took more than {seconds} s")

    before = signal.signal(signal.SIGALRM, timeout)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


CASE_SECONDS = 60  # a case is a read (milliseconds) or, for a few, a conversion of the small model (a second)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_damaged_imatrix_is_refused_in_one_line_or_read_whole(family, good, planned, checkpoint, tmp_path):
    then = convert_with(checkpoint, tmp_path / "out")
    bad, outcomes = [], {"refused": 0, "accepted": 0}
    with bounded(CASE_SECONDS, extra_bytes=1 << 30):
        for i in range(CASES_PER_FAMILY):
            seed = FAMILIES.index(family) * 1_000_000 + i
            signal.alarm(CASE_SECONDS)
            case = run_case(seed, family, good, planned, tmp_path, then)
            signal.alarm(0)
            if case.outcome not in outcomes:
                bad.append(f"seed {case.seed} [{case.outcome}] {case.what}: {case.detail}")
            else:
                outcomes[case.outcome] += 1
    assert not bad, "\n".join(bad)
    assert outcomes["refused"] > 0, f"{family} damages nothing that must be refused: {outcomes}"


def _dat(edit) -> bytes:
    names = [b"blk.0.attn_v.weight", b"blk.0.ffn_down_exps.weight"]
    ones = np.ones(256, np.float32)
    dat = Dat([DatEntry(names[0], 2, ones), DatEntry(names[1], 2, np.tile(ones, 16))], 4, b"calib.txt")
    edit(dat)
    return encode_dat(dat)


def _set(attr, value, entry=None):
    def edit(dat):
        setattr(dat.entries[entry] if entry is not None else dat, attr, value)

    return edit


def _values(value, entry=0):
    return lambda dat: dat.entries[entry].values.__setitem__(slice(3, 5), value)


def _gguf(sums: np.ndarray, counts: np.ndarray, edit=None):
    """A one-entry GGUF imatrix of `a` holding these arrays; `edit` changes its decoded header."""

    def make(tmp: Path) -> bytes:
        im = Imatrix({}, ["calib.txt"], 2, 64)
        path = encode_gguf(tmp / "scratch.gguf", im, {"a.in_sum2": sums, "a.counts": counts})
        if edit is None:
            return path.read_bytes()
        doc = Doc.of(path)
        edit(doc)
        return encode(doc)

    return make


def _retype_datasets(doc: Doc) -> None:
    kv = next(kv for kv in doc.kvs if kv[0] == "imatrix.datasets")
    kv[1:] = [gguf.GGUFValueType.UINT16, None, 7]


ONE = np.ones((1, 256), np.float32)
# each a failing input the fuzzing found (seed and family in the reason), made small:
# (reason, the file's bytes given a scratch folder, the one line's fragment)
REGRESSIONS = [
    (
        "dat-int seed 2000002, a name length of 1023: the message carried raw bytes of the values (a newline too)",
        lambda t: _dat(_set("name_len", 30, 0)),
        "entry 1's name b'blk.0.attn_v.weight",
    ),
    (
        "dat-values seed 3000026: a negative value was read; llama-quantize weights rows by it",
        lambda t: _dat(_values(-1.0)),
        "blk.0.attn_v.weight holds a negative value: sums of squares are >= 0",
    ),
    (
        "dat-values: a NaN value was read (the consumer caught it, the reader's other callers not)",
        lambda t: _dat(_values(math.nan)),
        "blk.0.attn_v.weight holds a value that is not finite",
    ),
    (
        "dat-int seed 2000013: a chunk count of -2**31 was read",
        lambda t: _dat(_set("chunk_count", -(2**31))),
        "the trailer holds a chunk count of -2147483648",
    ),
    (
        "dat-int: a negative call count was read (llama.cpp then divides by nothing)",
        lambda t: _dat(_set("ncall", -3, 1)),
        "blk.0.ffn_down_exps.weight has a call count of -3",
    ),
    (
        "gguf-kv seed 8000021, imatrix.datasets retyped UINT16: TypeError 'int' object is not iterable",
        _gguf(ONE, ONE[:, :1], _retype_datasets),
        "key imatrix.datasets is not an array of strings",
    ),
    (
        "gguf-tensor-info seed 9000010, a count tensor of 0 elements: ValueError cannot reshape",
        _gguf(ONE, ONE[:, :1], lambda d: d.tensors[1].__setitem__(1, [0, 1])),
        "a has 256 sums for 0 counts",
    ),
    (
        "gguf-tensor-info seed 9000006, a data offset moved: gguf-py read other bytes as the sums",
        _gguf(ONE, ONE[:, :1], lambda d: d.tensors[1].__setitem__(3, d.tensors[1][3] + 4)),
        "truncated or damaged GGUF imatrix: ",
    ),
    (
        "gguf-values seed 10000000, a NaN count: np.rint(NaN) cast to int64 gave -2**63",
        _gguf(ONE, np.array([[math.nan]], np.float32)),
        "a.counts holds nan: counts are whole numbers of tokens",
    ),
    (
        "gguf-values seed 10000024, a count of 1.2e21: cast to int64 it overflowed to -2**63",
        _gguf(ONE, np.array([[1.2e21]], np.float32)),
        "a.counts holds 1.2",
    ),
    (
        "gguf-values seed 10000013, a count of -1 was read as -1",
        _gguf(ONE, np.array([[-1]], np.float32)),
        "a.counts holds -1.0",
    ),
    (
        "gguf-length seed 12000000, 17 counts for 16 rows of sums: ValueError cannot reshape",
        _gguf(np.ones((16, 256), np.float32), np.ones((17, 1), np.float32)),
        "a has 4,096 sums for 17 counts",
    ),
    (
        "gguf-values seed 10000017, negative sums were read",
        _gguf(-ONE, ONE[:, :1]),
        "a.in_sum2 holds a negative value",
    ),
]


@pytest.mark.parametrize(
    "reason,make,fragment", REGRESSIONS, ids=[r[0].split(",")[0].split(":")[0] for r in REGRESSIONS]
)
def test_regressions_are_one_line(reason, make, fragment, tmp_path):
    path = tmp_path / "bad.imatrix"
    path.write_bytes(make(tmp_path))
    with pytest.raises(ImatrixError) as e:
        read_imatrix(path)
    assert fragment in e.value.message and str(path) in e.value.message and "\n" not in str(e.value), str(e.value)


def test_an_entry_count_is_never_trusted_for_memory(tmp_path):
    """2**31 - 1 entries announced in a 20-byte file: refused before anything is allocated for them."""
    path = tmp_path / "huge.dat"
    path.write_bytes(struct.pack("<i", 2**31 - 1) + bytes(16))
    with pytest.raises(ImatrixError, match=r"neither a GGUF nor a legacy \.dat imatrix \(entry count 2147483647\)"):
        read_imatrix(path)
