"""Preset decisions tensor by tensor, checked against llama.cpp's rules for qwen3moe."""

from __future__ import annotations

import pytest
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q

from marco_gguf.arch.qwen3moe import Piece, PlannedTensor, gguf_name
from marco_gguf.quant.presets import builtin_presets, load_preset, parse_overrides

MINI = dict(n_layers=28, hidden=1024, ff=768, experts=256)
NANO = dict(n_layers=28, hidden=1024, ff=384, experts=232)


def tensor(kind: T, layer: int | None, m: dict) -> PlannedTensor:
    h, ff, e = m["hidden"], m["ff"], m["experts"]
    shapes = {
        T.ATTN_V: (1024, h),
        T.ATTN_Q: (2048, h),
        T.ATTN_NORM: (h,),
        T.FFN_GATE_INP: (e, h),
        T.FFN_DOWN_EXP: (e, h, ff),
        T.FFN_GATE_EXP: (e, ff, h),
        T.TOKEN_EMBD: (151936, h),
        T.OUTPUT: (151936, h),
    }
    return PlannedTensor(gguf_name(kind, layer), kind, layer, shapes[kind], (Piece("x", 0, 1),))


CASES = [  # (reason, preset, model, tensor kind, layer, tied, expected)
    ("Q4_K_M default", "q4_k_m", MINI, T.ATTN_Q, 3, True, Q.Q4_K),
    ("Q4_K_M attn_v on a more_bits layer (first eighth)", "q4_k_m", MINI, T.ATTN_V, 2, True, Q.Q6_K),
    ("Q4_K_M attn_v on layer 3: not more_bits", "q4_k_m", MINI, T.ATTN_V, 3, True, Q.Q4_K),
    ("Q4_K_M attn_v on layer 5: (5 - 3) % 3 == 2", "q4_k_m", MINI, T.ATTN_V, 5, True, Q.Q6_K),
    ("Q4_K_M attn_v on layer 24: last eighth", "q4_k_m", MINI, T.ATTN_V, 24, True, Q.Q6_K),
    ("Q4_K_M ffn_down_exps more_bits layer, Mini", "q4_k_m", MINI, T.FFN_DOWN_EXP, 8, True, Q.Q6_K),
    ("Q4_K_M ffn_down_exps ordinary layer, Mini", "q4_k_m", MINI, T.FFN_DOWN_EXP, 9, True, Q.Q4_K),
    (
        "Q4_K_M ffn_down_exps more_bits, Nano 384-wide rows: Q6_K -> Q8_0",
        "q4_k_m",
        NANO,
        T.FFN_DOWN_EXP,
        8,
        True,
        Q.Q8_0,
    ),
    (
        "Q4_K_M ffn_down_exps ordinary, Nano 384-wide rows: Q4_K -> Q5_0",
        "q4_k_m",
        NANO,
        T.FFN_DOWN_EXP,
        9,
        True,
        Q.Q5_0,
    ),
    ("Q4_K_M gate experts, Nano: rows of 1024 fit Q4_K", "q4_k_m", NANO, T.FFN_GATE_EXP, 9, True, Q.Q4_K),
    ("Q4_K_M tied embeddings serve as output: Q6_K", "q4_k_m", MINI, T.TOKEN_EMBD, None, True, Q.Q6_K),
    ("Q4_K_M untied embeddings: default", "q4_k_m", MINI, T.TOKEN_EMBD, None, False, Q.Q4_K),
    ("Q4_K_M untied output: Q6_K", "q4_k_m", MINI, T.OUTPUT, None, False, Q.Q6_K),
    ("router never quantized", "q4_k_m", MINI, T.FFN_GATE_INP, 0, True, Q.F32),
    ("norms never quantized", "q8_0", MINI, T.ATTN_NORM, 0, True, Q.F32),
    ("Q4_K_S attn_v layers 0-3 get Q5_K", "q4_k_s", MINI, T.ATTN_V, 3, True, Q.Q5_K),
    ("Q4_K_S attn_v layer 4: default", "q4_k_s", MINI, T.ATTN_V, 4, True, Q.Q4_K),
    ("Q4_K_S ffn_down_exps below n/8 (28 -> 0-2)", "q4_k_s", MINI, T.FFN_DOWN_EXP, 2, True, Q.Q5_K),
    ("Q4_K_S ffn_down_exps layer 3", "q4_k_s", MINI, T.FFN_DOWN_EXP, 3, True, Q.Q4_K),
    ("Q4_K_S Nano ffn_down layer 0: Q5_K -> Q5_1", "q4_k_s", NANO, T.FFN_DOWN_EXP, 0, True, Q.Q5_1),
    ("Q8_0 everything 2-D incl. tied embeddings", "q8_0", MINI, T.TOKEN_EMBD, None, True, Q.Q8_0),
    ("BF16 experts", "bf16", NANO, T.FFN_DOWN_EXP, 4, True, Q.BF16),
    ("F16 Nano experts (block 1: no fallback)", "f16", NANO, T.FFN_DOWN_EXP, 4, True, Q.F16),
]


@pytest.mark.parametrize("reason,preset,model,kind,layer,tied,expected", CASES, ids=[c[0] for c in CASES])
def test_preset_types(reason, preset, model, kind, layer, tied, expected):
    t = tensor(kind, layer, model)
    got = load_preset(preset).tensor_type(t, n_layers=model["n_layers"], tied=tied, n_experts=model["experts"])
    assert got == expected


def test_shipped_presets():
    assert {"f32", "f16", "bf16", "q8_0", "q4_k_m", "q4_k_s", "q5_k_m", "q6_k"} <= set(builtin_presets())
    for name in builtin_presets():
        p = load_preset(name)
        assert p.name.lower() == name and p.description


OVERRIDE_CASES = [  # (reason, overrides, tensor kind, layer, expected)
    ("first matching pattern wins", ["ffn_down_exps=q8_0", "ffn_.*=q6_k"], T.FFN_DOWN_EXP, 9, Q.Q8_0),
    ("regex search like llama-quantize", [r"blk\.9\..*=q5_k"], T.FFN_DOWN_EXP, 9, Q.Q5_K),
    ("non-matching override leaves the preset's choice", [r"blk\.10\.=q8_0"], T.FFN_DOWN_EXP, 9, Q.Q4_K),
    ("overrides still respect the row-size fallback", ["ffn_down_exps=q6_k"], T.FFN_DOWN_EXP, 9, Q.Q6_K),
    ("never-quantized tensors stay F32", ["ffn_gate_inp=q8_0"], T.FFN_GATE_INP, 0, Q.F32),
]


@pytest.mark.parametrize("reason,overrides,kind,layer,expected", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_tensor_type_overrides(reason, overrides, kind, layer, expected):
    got = load_preset("q4_k_m").tensor_type(
        tensor(kind, layer, MINI), n_layers=28, tied=True, n_experts=256, overrides=parse_overrides(overrides)
    )
    assert got == expected
