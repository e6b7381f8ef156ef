"""The IQ and low-bit presets at Marco's real shapes (28 layers, 16/8 heads), from llama-quant.cpp's rules;
byte parity on small fixtures is in test_imatrix_quantize.py. Nano's 384-wide ffn_down_exps rows take each
new type's fallback (tensor_type_fallback)."""

from __future__ import annotations

import pytest
from gguf import MODEL_TENSOR as T
from gguf import GGMLQuantizationType as Q
from test_presets import MINI, NANO, tensor

from marco_gguf.quant.presets import load_preset

CASES = [  # (reason, preset, model, kind, layer, imatrix, expected)
    ("Q2_K default", "q2_k", MINI, T.ATTN_Q, 5, False, Q.Q2_K),
    ("Q2_K attn_v: n_gqa 2 < 4 -> Q3_K", "q2_k", MINI, T.ATTN_V, 5, False, Q.Q3_K),
    ("Q2_K ffn_down_exps Q3_K", "q2_k", MINI, T.FFN_DOWN_EXP, 9, False, Q.Q3_K),
    ("Q2_K Nano ffn_down: Q3_K -> Q4_0", "q2_k", NANO, T.FFN_DOWN_EXP, 9, False, Q.Q4_0),
    ("Q3_K_S Nano ffn_down: Q3_K -> Q4_0", "q3_k_s", NANO, T.FFN_DOWN_EXP, 9, False, Q.Q4_0),
    ("Q3_K_M attn_v layers 0-1 Q5_K", "q3_k_m", MINI, T.ATTN_V, 1, False, Q.Q5_K),
    ("Q3_K_M attn_v layer 2 Q4_K", "q3_k_m", MINI, T.ATTN_V, 2, False, Q.Q4_K),
    ("Q3_K_M ffn_down layer 0 (< 28/16) Q5_K", "q3_k_m", MINI, T.FFN_DOWN_EXP, 0, False, Q.Q5_K),
    ("Q3_K_M ffn_down layer 1 Q4_K", "q3_k_m", MINI, T.FFN_DOWN_EXP, 1, False, Q.Q4_K),
    ("Q3_K_M Nano ffn_down layer 1: Q4_K -> Q5_0", "q3_k_m", NANO, T.FFN_DOWN_EXP, 1, False, Q.Q5_0),
    ("Q3_K_L ffn_down Q5_K", "q3_k_l", MINI, T.FFN_DOWN_EXP, 14, False, Q.Q5_K),
    ("Q3_K_L Nano ffn_down: Q5_K -> Q5_1", "q3_k_l", NANO, T.FFN_DOWN_EXP, 14, False, Q.Q5_1),
    ("IQ4_NL ffn_down first eighth without an imatrix: Q5_K", "iq4_nl", MINI, T.FFN_DOWN_EXP, 2, False, Q.Q5_K),
    ("IQ4_NL ffn_down first eighth with an imatrix: IQ4_NL", "iq4_nl", MINI, T.FFN_DOWN_EXP, 2, True, Q.IQ4_NL),
    ("IQ4_NL Nano ffn_down: 32-blocks fit 384", "iq4_nl", NANO, T.FFN_DOWN_EXP, 9, True, Q.IQ4_NL),
    ("IQ4_XS Nano ffn_down: IQ4_XS -> IQ4_NL", "iq4_xs", NANO, T.FFN_DOWN_EXP, 9, True, Q.IQ4_NL),
    ("IQ4_XS Nano ffn_down layer 0 without imatrix: Q5_K -> Q5_1", "iq4_xs", NANO, T.FFN_DOWN_EXP, 0, False, Q.Q5_1),
    ("IQ3_M default IQ3_S", "iq3_m", MINI, T.FFN_GATE_EXP, 9, True, Q.IQ3_S),
    ("IQ3_M attn_v Q4_K", "iq3_m", MINI, T.ATTN_V, 9, True, Q.Q4_K),
    ("IQ3_M Nano ffn_down: IQ3_S -> IQ4_NL", "iq3_m", NANO, T.FFN_DOWN_EXP, 9, True, Q.IQ4_NL),
    ("IQ3_XXS attn_v with imatrix stays IQ3_XXS", "iq3_xxs", MINI, T.ATTN_V, 9, True, Q.IQ3_XXS),
    ("IQ3_XXS attn_v without imatrix IQ3_S", "iq3_xxs", MINI, T.ATTN_V, 9, False, Q.IQ3_S),
    ("IQ3_XXS attn_q IQ2_S", "iq3_xxs", MINI, T.ATTN_Q, 9, True, Q.IQ2_S),
    ("IQ3_XXS tied embeddings Q5_K", "iq3_xxs", MINI, T.TOKEN_EMBD, None, True, Q.Q5_K),
    ("IQ3_XXS Nano ffn_down with imatrix: IQ3_XXS -> IQ4_NL", "iq3_xxs", NANO, T.FFN_DOWN_EXP, 9, True, Q.IQ4_NL),
    ("IQ2_M attn_v: 256 experts >= 4 -> Q4_K", "iq2_m", MINI, T.ATTN_V, 9, True, Q.Q4_K),
    ("IQ2_M ffn_down first eighth IQ3_S", "iq2_m", MINI, T.FFN_DOWN_EXP, 1, True, Q.IQ3_S),
    ("IQ2_M experts IQ2_S", "iq2_m", MINI, T.FFN_GATE_EXP, 9, True, Q.IQ2_S),
    ("IQ2_M Nano ffn_down: IQ2_S -> IQ4_NL", "iq2_m", NANO, T.FFN_DOWN_EXP, 9, True, Q.IQ4_NL),
    ("IQ2_XS ffn_down first eighth Q2_K", "iq2_xs", MINI, T.FFN_DOWN_EXP, 0, True, Q.Q2_K),
    ("IQ2_XS Nano ffn_down layer 0: Q2_K -> Q4_0", "iq2_xs", NANO, T.FFN_DOWN_EXP, 0, True, Q.Q4_0),
    ("IQ2_XS Nano ffn_down layer 9: IQ2_XS -> IQ4_NL", "iq2_xs", NANO, T.FFN_DOWN_EXP, 9, True, Q.IQ4_NL),
]


@pytest.mark.parametrize("reason,preset,model,kind,layer,imatrix,expected", CASES, ids=[c[0] for c in CASES])
def test_lowbit_preset_types(reason, preset, model, kind, layer, imatrix, expected):
    got = load_preset(preset).tensor_type(
        tensor(kind, layer, model), n_layers=28, tied=True, n_experts=model["experts"], n_gqa=2, imatrix=imatrix
    )
    assert got == expected


@pytest.mark.parametrize(
    "preset,name,needs",
    [
        ("iq2_xs", "blk.0.ffn_up_exps.weight", True),
        ("iq3_xxs", "blk.0.attn_q.weight", True),
        ("iq2_xs", "token_embd.weight", False),
        ("q2_k", "blk.0.ffn_up_exps.weight", False),
    ],
)
def test_requires_imatrix(preset, name, needs):
    p = load_preset(preset)
    assert p.requires_imatrix(name, p.default_type if name != "blk.0.attn_q.weight" else Q.IQ2_S) is needs
