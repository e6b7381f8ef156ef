"""What a unit of each tensor's measured error costs the model's output: its gain, in KLD per unit of error.

The plan's errors (measure_types) are each tensor's imatrix-weighted squared output error per token, in that
tensor's own units: a late layer's ffn_down_exps has errors a thousand times an early attn_v's, and summed
as they are the plan starves early attention. On the proxy (BENCHMARKS.md, "Plans weighed by sensitivity")
a Q4_K-sized error costs 0.039 of mean KLD in layer 0's attn_v and 0.006 in layer 29's ffn_down_exps, whose
error is 1.3 million times larger in the planner's units.

So the gains are measured end to end, by llama.cpp, on a GGUF of the same model (Q8_0, as for the imatrix):
one pass over one chunk of the calibration text for the reference logits, then one pass per tensor with
Gaussian noise added to that weight's product inside llama.cpp's graph (the observer rewrites the node
before the next op reads it). The noise has, per token, the energy the tensor's own error has at the
reference type in the planner's measurements (so each tensor is measured where plans operate), spread over
tokens (and expert slots) in proportion to each one's input energy, as a weight error's output is. The gain
is the mean KLD of the noisy logits from the clean ones divided by that energy. Noise is seeded per tensor:
the same inputs give the same gains.

An embedding is also looked up (GET_ROWS), and the planner's errors of a tied one count only its product
as the output matrix. So in its pass the looked-up rows get their own error too, the real one: quantized to
the reference type and back with ggml. Without it the proxy's tied embedding's gain was 2.2x too small and
its plan at Q3_K_M's size gave it IQ4_XS, not Q5_K (mean KLD 0.381 against 0.324). A tied embedding's gain
stays per unit of its product's error; an untied one's is per unit of its lookup's.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import PlannedTensor
from marco_gguf.base.errors import PlanError
from marco_gguf.base.machine import physical_cores
from marco_gguf.base.progress import Progress, ProgressEvent
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.llama.ggml import dequantize_rows, quantize_rows
from marco_gguf.llama.observer import GraphObserver, Node, ObservedModel
from marco_gguf.quant.imatrix import read_text, weight_name
from marco_gguf.quant.measure_cache import read_keyed, write_keyed
from marco_gguf.version import __version__

FORMAT = 2  # bump when what is measured changes (2: an embedding's lookup error)
REFERENCE = (Q.Q4_K, Q.IQ4_XS, Q.Q4_0, Q.Q5_K, Q.Q3_K, Q.Q8_0)  # the noise energy: the first type measured
CTX = 512  # tokens in the one chunk measured
UNQUANTIZED = (Q.F32, Q.F16, Q.BF16)
KLD_ROWS = 32  # tokens per float64 step of the KLD: 39 MB an array on Marco's vocabulary


@dataclass(frozen=True)
class Sensitivity:
    """Per tensor: the gain (the KLD and noise energy behind it are in the cache file)."""

    gains: dict[str, float]
    measured: int  # tensors measured now (0: all from the cache)
    cache: Path
    key: str  # the cache's key: what the gains were measured from


class Noise:
    """The observer's side: noise of a set energy per token on the product of each target weight, and the
    lookup's own error where a target is an embedding. Each target is (its type, the energy): the type is the
    one the lookup is quantized to. Noise is seeded per tensor, so a tensor's noise is the same alone or in a
    group."""

    def __init__(self) -> None:
        self.targets: dict[str, tuple[Q, float]] = {}
        self.injected = self.looked_up = 0.0

    def aim(self, targets: Mapping[str, tuple[Q, float]]) -> None:
        self.targets, self.injected, self.looked_up = dict(targets), 0.0, 0.0

    def wants(self, node: Node) -> bool:
        ops = ("MUL_MAT", "MUL_MAT_ID", "GET_ROWS")
        return node.op in ops and weight_name(node.arg(0).name) in self.targets

    def take(self, node: Node) -> None:
        name = weight_name(node.arg(0).name)
        kind, energy = self.targets[name]
        if node.op == "GET_ROWS":
            if kind not in UNQUANTIZED:  # a float type's lookup error is rounding, nothing to model
                self._lookup(node, kind)
            return
        # numpy order: MUL_MAT (1, 1, tokens, n); MUL_MAT_ID (1, tokens, slots, n) with input slots 1 or all
        out, inp = node.numpy(), node.arg(1).numpy().astype(np.float64)
        weight = np.broadcast_to((inp**2).sum(-1, keepdims=True), out.shape[:-1] + (1,))
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        noise = rng.standard_normal(out.shape) * np.sqrt(weight / max(float(weight.mean()), 1e-300))
        tokens = out.shape[-3] if node.op == "MUL_MAT_ID" else math.prod(out.shape[:-1])
        noise *= math.sqrt(energy / max(float((noise**2).sum()) / tokens, 1e-300))
        self.injected += float((noise**2).sum()) / tokens
        node.write(out + noise)

    def _lookup(self, node: Node, kind: Q) -> None:
        rows = node.numpy()
        flat = np.ascontiguousarray(rows.reshape(-1, rows.shape[-1]), dtype=np.float32)
        back = dequantize_rows(kind, quantize_rows(kind, flat), flat.shape[1])
        self.looked_up += float(((back - flat).astype(np.float64) ** 2).sum()) / flat.shape[0]
        node.write(back.reshape(rows.shape))


def _log_probs(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z -= z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def mean_kld(ref: np.ndarray, logits: np.ndarray, rows: int = KLD_ROWS) -> float:
    """Mean over tokens of KL(softmax(ref) || softmax(logits)), in float64 a few rows at a time: whole, Marco's
    vocabulary of 151,936 makes each float64 (tokens, vocabulary) array 0.6 GB a chunk of 512 tokens."""
    total = 0.0
    for a in range(0, len(ref), rows):
        r, q = _log_probs(ref[a : a + rows]), _log_probs(logits[a : a + rows])
        total += float((np.exp(r) * (r - q)).sum())
    return total / len(ref)


def energies(errors: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[Q, float]]:
    """Each tensor's reference type, the first REFERENCE type it has, and its measured error there."""
    out = {}
    for name, by_type in errors.items():
        q = next((q for q in REFERENCE if q.name in by_type and by_type[q.name] > 0), None)
        if q is not None:
            out[name] = (q, by_type[q.name])
    return out


def check_model(path: Path, quant: Sequence[PlannedTensor]) -> None:
    """The GGUF must hold this model's quantized tensors with their shapes (any types)."""
    tensors = {t.name: tuple(t.shape) for t in read_header(path).tensors}
    for t in quant:
        have = tensors.get(t.name)
        if have != tuple(t.shape):
            what = "no such tensor" if have is None else f"shape {list(have)}"
            raise PlanError(
                f"{path}: {t.name} has {what}, this model's is {list(t.shape)}: a GGUF of another model",
                "give --sensitivity a GGUF converted from this checkpoint (e.g. its Q8_0)",
            )


class Passes:
    """One GGUF loaded with the noise observer and the calibration chunk's clean log-probabilities: then each
    pass is the mean KLD of the chunk's logits with `targets` noised (Noise.aim) from the clean ones."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path, self.threads, self.noise = path, threads or physical_cores(), Noise()

    def __enter__(self) -> Passes:
        observer = GraphObserver(self.noise.wants, self.noise.take)
        self._model = ObservedModel(self.path, observer, n_ctx=CTX, threads=self.threads)
        try:
            self._tokens = self._model.tokenize(read_text(None, PlanError)[0])[:CTX]
            self._ref = self._model.logits(self._tokens)  # float32 logits, 0.3 GB on Marco
        except BaseException:
            self._model.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._model.close()

    def kld(self, targets: Mapping[str, tuple[Q, float]]) -> float:
        # the clean log-softmax is redone each pass (1-2 % of a pass on Mini): kept, it would hold 0.6 GB
        self.noise.aim(targets)
        return max(mean_kld(self._ref, self._model.logits(self._tokens)), 0.0)


def measure_gains(
    path: Path,
    energy: Mapping[str, tuple[Q, float]],
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict[str, tuple[float, float]]:
    """(KLD, energy) per tensor in `energy` (its reference type and error), one llama.cpp pass each over the
    calibration text. The energy is the product's noise per token, or an untied embedding's lookup error."""
    out: dict[str, tuple[float, float]] = {}
    with Passes(path, threads) as passes:
        for i, name in enumerate(sorted(energy)):
            kld = passes.kld({name: energy[name]})
            out[name] = (kld, passes.noise.injected or passes.noise.looked_up)
            if progress is not None:
                progress(ProgressEvent(i + 1, len(energy), "tensors", f"sensitivity {name}"))
    return out


def gguf_identity(path: Path) -> str:
    """A GGUF's identity for the cache: its size and its header's bytes (names, shapes, types, metadata)."""
    header = read_header(path)
    with open(path, "rb") as f:
        head = f.read(header.data_offset)
    return hashlib.sha256(head + str(path.stat().st_size).encode()).hexdigest()


def cache_path(folder: Path, stem: str, key: str) -> Path:
    return folder / f"{stem}.sensitivity-{key[:16]}.json"


def _load(path: Path, key: str) -> dict[str, tuple[float, float]] | None:
    """The cached (KLD, energy) per tensor, or None when missing, damaged or made under another key."""
    doc = read_keyed(path, key)
    if doc is None:
        return None
    try:
        out = {str(n): (float(k), float(e)) for n, (k, e) in doc["tensors"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    ok = all(math.isfinite(k) and math.isfinite(e) and k >= 0 and e >= 0 for k, e in out.values())
    return out if ok else None


def sensitivity(
    path: str | Path,
    quant: Sequence[PlannedTensor],
    errors: Mapping[str, Mapping[str, float]],
    *,
    measure_key: str,
    cache: tuple[Path, str],
    threads: int | None = None,
    progress: Progress | None = None,
) -> Sensitivity:
    """Every quantized tensor's gain, measured on the GGUF `path` (or read from the cache beside the output);
    the caller has checked the GGUF with check_model before measuring the errors."""
    path, names = Path(path), {t.name for t in quant}
    energy = {n: e for n, e in energies(errors).items() if n in names}
    parts = [f"format {FORMAT}", f"marco-gguf {__version__}", measure_key, gguf_identity(path), f"ctx {CTX}"]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    file = cache_path(*cache, key)
    found = _load(file, key)
    measured = 0
    if found is None or set(found) != set(energy):
        found = measure_gains(path, energy, threads=threads, progress=progress)
        measured = len(found)
        write_keyed(file, {"key": key, "format": FORMAT, "version": __version__, "model": path.name, "tensors": found})
    gains = {n: k / e for n, (k, e) in found.items() if e > 0 and k > 0}
    fill = float(np.median(list(gains.values()))) if gains else 1.0
    return Sensitivity(
        {t.name: gains.get(t.name, fill) for t in quant},
        measured,
        file,
        key,
    )
