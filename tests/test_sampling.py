"""Sampling is one value: Marco's defaults, overlaid by the GGUF's general.sampling.*, then by the user."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from checkpoints import Spec
from model_files import variant

from marco_gguf import ChatSession, convert
from marco_gguf.arch.sampling import Sampling, gguf_sampling, model_sampling
from marco_gguf.base.errors import ChatError
from marco_gguf.llama.engine import Engine

GENERATION = {"temperature": 0.6, "top_k": 30, "repetition_penalty": 1.05}  # what a model card's config says


@pytest.fixture(scope="module")
def sampled(checkpoint, tmp_path_factory):
    """A GGUF whose checkpoint's generation_config.json says temperature 0.6 and top-k 30."""
    tmp = tmp_path_factory.mktemp("sampled")
    folder = variant(checkpoint(Spec()), tmp / "Marco-Sampled", generation=GENERATION)
    return convert(folder, preset="f16", outdir=tmp, threads=2).path


@pytest.mark.parametrize(
    "reason, fields, user, expected",
    [
        ("no keys, no options: Marco's defaults", {}, {}, Sampling()),
        ("the file's keys replace Marco's", {"general.sampling.temp": 0.6}, {}, Sampling(temperature=0.6)),
        (
            "float32 in the file reads back as the config wrote it",
            {"general.sampling.top_p": 0.949999988079071},
            {},
            Sampling(top_p=0.95),
        ),
        (
            "llama.cpp's metadata strings count too",
            {"general.sampling.temp": "0.600000", "general.sampling.top_k": "30"},
            {},
            Sampling(temperature=0.6, top_k=30),
        ),
        ("the user wins over the file", {"general.sampling.temp": 0.6}, {"temperature": 0.2}, Sampling(0.2)),
        ("None is 'not set'", {"general.sampling.temp": 0.6}, {"temperature": None}, Sampling(temperature=0.6)),
        ("a damaged value is no setting", {"general.sampling.temp": "hot"}, {}, Sampling()),
    ],
)
def test_resolution_order(reason, fields, user, expected):
    assert model_sampling(gguf_sampling(fields), user) == expected, reason


def test_unknown_setting_is_refused_by_name():
    with pytest.raises(ChatError, match="unknown sampling setting 'temp'"):
        Sampling().overlay({"temp": 0.5})


def test_the_converter_stores_what_chat_reads(sampled):
    """Reason: generation_config.json -> general.sampling.* -> the sampling chat and serve use."""
    with ChatSession(sampled, ctx=256) as s:
        assert s.sampling == Sampling(temperature=0.6, top_k=30)  # repetition_penalty: gguf-py stores no such key
    with ChatSession(sampled, ctx=256, sampling={"temperature": 0.1, "seed": 3}) as s:
        assert s.sampling == Sampling(temperature=0.1, top_k=30, seed=3)


def test_engine_requests_default_to_the_models_sampling(sampled):
    """Reason: serve's engine gives a request that sets nothing the model's own settings."""
    engine = Engine(sampled, ctx=256, parallel=1)
    try:
        assert engine.sampling == Sampling(temperature=0.6, top_k=30)
    finally:
        engine.close()


def test_inspect_shows_the_models_sampling(sampled):
    proc = subprocess.run(
        [sys.executable, "-m", "marco_gguf", "inspect", str(sampled), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sampling"] == {"temperature": 0.6, "top_k": 30}
