"""GET /metrics: the engine's counters and gauges in Prometheus' text format (version 0.0.4).

Names follow llama-server's `/metrics` (tools/server, `llamacpp:` there, `marco_gguf_` here, since
a colon is reserved for recording rules), so dashboards made for it need only the prefix changed.
"""

from __future__ import annotations

from marco_gguf.llama.engine import EngineMetrics
from marco_gguf.llama.jobs import rate

PREFIX = "marco_gguf_"
# (name, type, help, value)
METRICS = [
    ("requests_total", "counter", "Requests accepted by the engine.", lambda m: m.requests_total),
    (
        "requests_cancelled_total",
        "counter",
        "Requests whose client went away before the end.",
        lambda m: m.requests_cancelled_total,
    ),
    ("prompt_tokens_total", "counter", "Prompt tokens evaluated.", lambda m: m.prompt_tokens_total),
    (
        "prompt_tokens_cached_total",
        "counter",
        "Prompt tokens reused from a slot's KV cache.",
        lambda m: m.prompt_tokens_cached_total,
    ),
    ("prompt_seconds_total", "counter", "Seconds spent on prompts.", lambda m: m.prompt_seconds_total),
    ("tokens_predicted_total", "counter", "Tokens generated.", lambda m: m.tokens_predicted_total),
    (
        "tokens_predicted_seconds_total",
        "counter",
        "Seconds spent generating.",
        lambda m: m.tokens_predicted_seconds_total,
    ),
    ("n_decode_total", "counter", "llama_decode calls (one per engine step).", lambda m: m.n_decode_total),
    (
        "prompt_tokens_seconds",
        "gauge",
        "Average prompt throughput in tokens/s.",
        lambda m: rate(m.prompt_tokens_total, m.prompt_seconds_total),
    ),
    (
        "predicted_tokens_seconds",
        "gauge",
        "Average generation throughput in tokens/s per request.",
        lambda m: rate(m.tokens_predicted_total, m.tokens_predicted_seconds_total),
    ),
    ("slots", "gauge", "Generation slots (--parallel).", lambda m: m.slots),
    ("requests_processing", "gauge", "Busy slots.", lambda m: m.busy_slots),
    ("requests_deferred", "gauge", "Requests waiting for a slot.", lambda m: m.queued),
    ("queue_size", "gauge", "Longest queue accepted (--queue).", lambda m: m.queue_size),
    ("kv_cache_tokens", "gauge", "Tokens held in the KV cache, all slots.", lambda m: m.kv_cache_tokens),
    (
        "kv_cache_usage_ratio",
        "gauge",
        "KV-cache use, 0 to 1 (of --ctx).",
        lambda m: m.kv_cache_tokens / m.kv_cache_size if m.kv_cache_size else 0.0,
    ),
]


# (name, help, value per slot): one sample per slot, labelled slot="0", slot="1", ...
PER_SLOT = [("slot_kv_cache_tokens", "Tokens held in the KV cache, per slot.", lambda m: m.slot_cache_tokens)]


def prometheus_text(m: EngineMetrics) -> str:
    lines = []
    for name, kind, text, value in METRICS:
        lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}", f"{PREFIX}{name} {value(m)}"]
    for name, text, values in PER_SLOT:
        lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} gauge"]
        lines += [f'{PREFIX}{name}{{slot="{i}"}} {v}' for i, v in enumerate(values(m))]
    return "\n".join(lines) + "\n"
