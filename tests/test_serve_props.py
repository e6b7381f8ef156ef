"""GET /props and GET /slots in llama-server's shapes: the defaults a request that sets nothing gets (Marco's,
overlaid by the GGUF's general.sampling.*, then by serve's options), n_ctx, slots, and the model's facts as
`inspect` reports them (the file read again with gguf-py for the size and the tensor types)."""

from __future__ import annotations

import json
import time

import gguf
import pytest
from checkpoints import Spec
from serving import LiveServer, request

from marco_gguf.arch.sampling import model_sampling
from marco_gguf.llama.engine import Engine
from marco_gguf.server import ServerState

SPEC = Spec(dtype="f32")


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(SPEC, "q8_0").path, ctx=1024, parallel=2, threads=2) as e:
        yield e


def get(url: str, path: str):
    status, _, body = request(url, "GET", path)
    assert status == 200, body
    return json.loads(body)


@pytest.mark.parametrize(
    "reason,user,max_tokens,n_predict",
    [
        ("nothing set at serve: the model's defaults, no limit (-1 as llama-server writes it)", {}, None, -1),
        ("serve's --temperature and --max-tokens win", {"temperature": 0.25, "top_k": 7}, 64, 64),
    ],
)
def test_props_are_the_defaults_a_request_gets_and_the_models_facts(engine, reason, user, max_tokens, n_predict):
    defaults = model_sampling(engine.info.sampling, user)
    state = ServerState(engine.info.path.name, defaults=defaults, max_tokens=max_tokens, engine=engine)
    with LiveServer(state) as s:
        props = get(s.url, "/props")
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] == 1024 and props["total_slots"] == 2
    params = settings["params"]
    for field in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty"):
        assert params[field] == getattr(defaults, field), field
    for field, value in user.items():
        assert params[field] == value, f"{field}: serve's option is what a request gets"
    assert params["max_tokens"] == params["n_predict"] == n_predict
    reader = gguf.GGUFReader(engine.info.path)
    model = props["model"]
    assert model["file"] == engine.info.path.name and model["size"] == engine.info.path.stat().st_size
    assert props["model_ftype"] == model["file_type"] == "Q8_0"
    assert props["chat_template"] == engine.template.source and props["model_alias"] == engine.info.path.name
    types = {t.tensor_type.name for t in reader.tensors}
    assert set().union(*(g["types"] for g in model["groups"].values())) == types
    assert sum(g["tensors"] for g in model["groups"].values()) == len(reader.tensors)
    assert sum(g["parameters"] for g in model["groups"].values()) == model["parameters"]
    assert model["experts"] == {
        "count": int(reader.get_field("qwen3moe.expert_count").contents()),
        "used": int(reader.get_field("qwen3moe.expert_used_count").contents()),
    }
    facts = engine.info.as_dict()
    for field in ("active_parameters", "bytes_per_token", "bits_per_weight"):
        assert model[field] == facts[field], field


def test_slots_show_idle_slots_and_the_one_generating(engine):
    with LiveServer(ServerState(engine.info.path.name, engine=engine)) as s:
        idle = get(s.url, "/slots")
        assert [(x["id"], x["is_processing"], x["n_ctx"]) for x in idle] == [(0, False, 1024), (1, False, 1024)]
        prompt = engine.tokenize("Tell me a long story about the sea.")
        job = engine.submit(prompt, max_tokens=900)
        try:
            deadline = time.monotonic() + 60
            while not (busy := [x for x in get(s.url, "/slots") if x["is_processing"]]):
                assert time.monotonic() < deadline, "no slot started the job"
                time.sleep(0.01)
        finally:
            job.cancel()
            job.wait()
    (slot,) = busy
    assert slot["id_task"] == job.id and slot["n_prompt_tokens"] == len(prompt)
    (progress,) = slot["next_token"]
    assert progress["n_remain"] + progress["n_decoded"] == 900
