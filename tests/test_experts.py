"""`experts`: llama.cpp's routing as seen by the graph observer equals transformers' float32 router.

The reference is transformers' own forward over the same token ids, chunk by chunk: its router's logits
(softmax then top-k, in float64 here) for the expert sets, and hooks on its experts module (the routing
weights it applies, each expert's own output) for the summed weights and the REAP sums.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from checkpoints import Spec
from test_imatrix import relative_error
from typer.testing import CliRunner

from marco_gguf.base.errors import ExpertsError, GGUFFileError
from marco_gguf.cli.app import app
from marco_gguf.experts.report import build_report, entropy_bits, experts_for_mass, jaccard
from marco_gguf.experts.usage import expert_usage
from marco_gguf.experts.usage_file import read_usage
from marco_gguf.quant.imatrix import read_text

MODEL = Spec(dtype="f32")  # 2 layers, 16 experts, top-4
DEEP = Spec(dtype="f32", layers=3, experts=8, top_k=2, seed=2)
CTX = 64
LOGIT_BOUND = 2e-3  # the issue's bound on relative error against transformers' float32 forward


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Two parts of the built-in calibration text; neither a whole number of chunks (the remainder counts)."""
    body, _ = read_text(None)
    folder = tmp_path_factory.mktemp("texts")
    (folder / "first.txt").write_text(body[:700], encoding="utf-8")
    (folder / "later.txt").write_text(body[30000:30500], encoding="utf-8")
    return [folder / "first.txt", folder / "later.txt"]


def llamacpp_router_logits(model, chunks, n_layers):
    """Per layer, llama.cpp's own router logits (`ffn_moe_logits-L`, F32 [E, tokens]) over the same chunks."""
    from marco_gguf.llama.observer import GraphObserver, ObservedModel, layer_of

    seen = [[] for _ in range(n_layers)]

    def take(node):
        seen[layer_of(node.name, "ffn_moe_logits")].append(node.numpy().reshape(-1, node.ne[0]).astype(np.float64))

    observer = GraphObserver(lambda node: layer_of(node.name, "ffn_moe_logits") is not None, take)
    with ObservedModel(model, observer, n_ctx=CTX, kv_f32=True) as m:
        m.run_chunks(chunks)
    return [np.concatenate(s) for s in seen]


def transformers_routing(folder, chunks):
    """Per layer: router logits [tokens, E] (softmax is monotone: the top-k probabilities are the top-k
    logits), and per expert counts, weights, REAP sums."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    model = Qwen3MoeForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    n_layers, n_exp = len(model.model.layers), model.config.num_experts
    probs = [[] for _ in range(n_layers)]
    stats = np.zeros((3, n_layers, n_exp))

    def router_hook(layer):
        def hook(_module, _inputs, output):
            probs[layer].append(output[0].double().numpy())

        return hook

    def experts_hook(layer, module):
        def hook(_module, inputs):
            h, idx, w = inputs[0].double(), inputs[1], inputs[2].double()
            for e in range(n_exp):
                tok, slot = torch.where(idx == e)
                gate, up = torch.nn.functional.linear(h[tok], module.gate_up_proj[e].double()).chunk(2, dim=-1)
                out = torch.nn.functional.linear(module.act_fn(gate) * up, module.down_proj[e].double())
                stats[:, layer, e] += [
                    len(tok),
                    w[tok, slot].sum().item(),
                    (w[tok, slot] * out.norm(dim=-1)).sum().item(),
                ]

        return hook

    for i, layer in enumerate(model.model.layers):
        layer.mlp.gate.register_forward_hook(router_hook(i))
        layer.mlp.experts.register_forward_pre_hook(experts_hook(i, layer.mlp.experts))
    with torch.no_grad():
        for chunk in chunks:
            model(torch.tensor([list(chunk)]))
    return [np.concatenate(p) for p in probs], stats


CASES = [
    ("2 layers, 16 experts, top-4; two texts", MODEL),
    ("3 layers, 8 experts, top-2", DEEP),
]


@pytest.mark.slow
@pytest.mark.parametrize("reason,spec", CASES, ids=[c[0] for c in CASES])
def test_routing_equals_transformers_router(reason, spec, checkpoint, converted, texts):
    model = converted(spec, "f32").path
    usage = expert_usage(model, texts, ctx=CTX, keep_routing=True, kv_f32=True)
    k, compared = spec.top_k, 0
    for t in usage.texts:
        assert t.tokens > CTX and t.tokens % CTX != 0
        assert (t.counts.sum(axis=1) == t.tokens * k).all()  # every token routed to k experts, in every layer
        logits, (counts, weight, reap_sum) = transformers_routing(checkpoint(spec), t.chunks)
        ours_logits = llamacpp_router_logits(model, t.chunks, spec.layers)
        ties, same = 0, True
        for layer in range(spec.layers):
            ref, got = logits[layer], ours_logits[layer]
            error = np.abs(got - ref).max(axis=1)  # per token: how far llama.cpp's logits are from the reference's
            assert (error / np.abs(ref).max(axis=1)).max() <= LOGIT_BOUND
            order = np.argsort(-ref, axis=1)
            top = np.sort(order[:, :k], axis=1)
            kth = np.take_along_axis(ref, order[:, k - 1 : k + 1], axis=1)
            clear = kth[:, 0] - kth[:, 1] > 2 * error  # a gap the two logits' difference cannot close: no tie
            ties += int((~clear).sum())
            ours = np.sort(t.routing[layer], axis=1)
            assert (ours[clear] == top[clear]).all(), f"{reason}: layer {layer}"
            same = same and (ours == top).all()
        assert ties <= t.tokens * spec.layers // 100
        if same:  # the same routing everywhere (no tie went the other way), so the same sums
            compared += 1
            assert (t.counts == counts).all()
            # the imatrix test's measure (largest difference / largest value); measured ~1e-6 with an F32 cache
            # and no flash attention (which would round K and V to F16)
            assert relative_error(t.weight, weight) <= 1e-5
            assert relative_error(t.reap_sum, reap_sum) <= 1e-5
        print(f"{reason}, {t.label}: {t.tokens} tokens, {ties} ties, sums compared: {same}")
    assert compared >= 1


def test_usage_file_round_trip_and_report(converted, texts, tmp_path):
    path = tmp_path / "usage.json"
    usage = expert_usage(converted(MODEL, "f32").path, texts, labels=["en", "mixed"], ctx=CTX, usage=path)
    back = read_usage(path)
    assert back.model == usage.model and back.labels == ["en", "mixed"]
    for a, b in zip(back.texts, usage.texts):
        assert (a.counts == b.counts).all() and np.array_equal(a.weight, b.weight) and np.array_equal(a.reap, b.reap)
    report = build_report(usage)
    assert [t.label for t in report.texts] == ["en", "mixed"]
    assert report.similarity[0][0] == report.similarity[1][1] == 1.0
    assert report.similarity[0][1] == report.similarity[1][0] < 1.0
    for figures, t in zip(report.texts, usage.texts):
        for f in figures.layers:
            assert (
                1 <= f.experts_for_mass["50"] <= f.experts_for_mass["90"] <= f.experts_for_mass["99"] <= MODEL.experts
            )
            assert 0 < f.entropy_bits <= np.log2(MODEL.experts)
            assert f.never_used == np.flatnonzero(t.counts[f.layer] == 0).tolist()


MASS_CASES = [  # (reason, weights, share, experts)
    ("one expert carries everything", [0, 5, 0, 0], 0.99, 1),
    ("uniform: half the experts for half the mass", [1, 1, 1, 1], 0.5, 2),
    ("uniform: all experts for 99 %", [1, 1, 1, 1], 0.99, 4),
    ("largest first: 6 + 3 reach 90 %", [1, 3, 6, 0], 0.9, 2),
    ("nothing routed", [0, 0, 0, 0], 0.5, 0),
]


@pytest.mark.parametrize("reason,weights,share,expected", MASS_CASES, ids=[c[0] for c in MASS_CASES])
def test_experts_for_mass(reason, weights, share, expected):
    assert experts_for_mass(np.array(weights, dtype=float), share) == expected


FIGURE_CASES = [  # (reason, value, expected)
    ("entropy of 4 equal experts is 2 bits", entropy_bits(np.ones(4)), 2.0),
    ("entropy of one expert is 0", entropy_bits(np.array([0.0, 3.0])), 0.0),
    ("Jaccard of {1,2} and {2,3} is 1/3", jaccard({1, 2}, {2, 3}), 1 / 3),
    ("Jaccard of two empty sets is 1", jaccard(set(), set()), 1.0),
]


@pytest.mark.parametrize("reason,value,expected", FIGURE_CASES, ids=[c[0] for c in FIGURE_CASES])
def test_figures(reason, value, expected):
    assert value == pytest.approx(expected)


def test_plot_is_a_png(converted, texts, tmp_path):
    expert_usage(converted(MODEL, "f32").path, texts, ctx=CTX, plot=tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


ERROR_CASES = [  # (reason, kwargs maker, fragments)
    ("more labels than texts", lambda t, tmp: dict(texts=t[:1], labels=["a", "b"]), ["2 --label for 1 --text"]),
    ("the same label twice", lambda t, tmp: dict(texts=t, labels=["x", "x"]), ["label 'x' is given to more than one"]),
    (
        "a text that is not UTF-8",
        lambda t, tmp: dict(texts=[_write(tmp, "l1.txt", b"caf\xe9")]),
        ["l1.txt: not UTF-8 text", "byte 0xe9 at offset 3"],
    ),
    ("an empty text", lambda t, tmp: dict(texts=[_write(tmp, "e.txt", "")]), ["e.txt: the text gives no tokens"]),
    (
        "a usage file in a missing folder",
        lambda t, tmp: dict(texts=t, usage=tmp / "no" / "u.json"),
        ["output folder does not exist"],
    ),
]


@pytest.mark.parametrize("reason,make,fragments", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_expert_usage_refuses(reason, make, fragments, converted, texts, tmp_path):
    with pytest.raises(ExpertsError) as e:
        expert_usage(converted(MODEL, "f32").path, ctx=CTX, **make(texts, tmp_path))
    for f in fragments:
        assert f in str(e.value)
    assert not (tmp_path / "no").exists()


def test_not_a_gguf(tmp_path, texts):
    with pytest.raises(GGUFFileError, match="not a GGUF file"):
        expert_usage(_write(tmp_path, "x.gguf", "hello"), texts)


def test_plot_without_matplotlib_is_refused_before_running(converted, texts, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    with pytest.raises(ExpertsError, match=r"--plot needs matplotlib.*marco-gguf\[plots\]"):
        expert_usage(converted(MODEL, "f32").path, texts, plot=tmp_path / "p.png", usage=tmp_path / "u.json")
    assert list(tmp_path.iterdir()) == []


USAGE_FILE_CASES = [  # (reason, content, fragment)
    ("not JSON", "{", "not valid JSON"),
    ("another kind of JSON", json.dumps({"kind": "marco-gguf quality", "version": 1}), "kind 'marco-gguf quality'"),
    ("a table of the wrong shape", None, "counts has shape [2, 3], expected [2, 16]"),
]


@pytest.mark.parametrize("reason,content,fragment", USAGE_FILE_CASES, ids=[c[0] for c in USAGE_FILE_CASES])
def test_damaged_usage_file(reason, content, fragment, converted, texts, tmp_path):
    if content is None:
        expert_usage(converted(MODEL, "f32").path, texts[:1], ctx=CTX, usage=tmp_path / "u.json")
        doc = json.loads((tmp_path / "u.json").read_text())
        doc["texts"][0]["counts"] = [[1, 2, 3], [4, 5, 6]]
        content = json.dumps(doc)
    with pytest.raises(ExpertsError, match=r"not a usage file|damaged|has shape") as e:
        read_usage(_write(tmp_path, "bad.json", content))
    assert fragment in str(e.value)


def test_cli_json_and_error_line(converted, texts, tmp_path):
    model = converted(MODEL, "f32").path
    r = CliRunner().invoke(
        app,
        [
            "experts",
            str(model),
            "--text",
            str(texts[0]),
            "--text",
            str(texts[1]),
            "--label",
            "en",
            "--label",
            "mixed",
            "-c",
            str(CTX),
            "--json",
            "--usage",
            str(tmp_path / "u.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [t["label"] for t in doc["report"]["texts"]] == ["en", "mixed"]
    assert len(doc["report"]["similarity"]) == 2 and doc["model"]["experts"] == MODEL.experts
    assert read_usage(tmp_path / "u.json").labels == ["en", "mixed"]
    r = CliRunner().invoke(app, ["experts", str(model), "--text", str(texts[0]), "--label", "a", "--label", "b"])
    assert r.exit_code == 1 and "error:" in r.output and "2 --label for 1 --text" in r.output
