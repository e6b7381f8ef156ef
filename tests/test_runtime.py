"""ChatSession on real GGUFs: HF-identical prompts, KV-cache reuse, context overflow, interruption, save/load."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from checkpoints import Spec

from marco_gguf.arch.chat_template import ChatTemplate
from marco_gguf.base.errors import ChatError, GGUFFileError, InsufficientMemoryError
from marco_gguf.llama.loader import check_model
from marco_gguf.llama.session import ChatSession
from marco_gguf.synth.qwen_vocab import CHATML_TEMPLATE

NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731

# (reason, system, turns): the last turn is the user message being sent
CONVERSATIONS = [
    (
        "system + multi-turn",
        "You are Marco, a helpful assistant.",
        ["What is a mixture of experts?", "It routes each token to a few experts.", "How many experts are active?"],
    ),
    ("no system message", None, ["Hello!", "Hi, how can I help?", "Tell me a joke."]),
    (
        "decomposed (NFD) input is normalized like Qwen's tokenizer.json",
        NFD("Réponds en français, s'il te plaît."),
        [NFD("Ça va? 한국어 Ελληνικά"), "Très bien.", NFD("Qu'est-ce que l'été?")],
    ),
    (
        "code, emoji, whitespace runs and digits",
        "Be terse.",
        ["def f(x):\n    return x  # 🙂\n\n\n", "```python\nprint(12345)\n```", "  trailing spaces   \t\n1234567890"],
    ),
]


def write_conversation(path: Path, system: str | None, turns: list[str]) -> None:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    path.write_text(json.dumps({"messages": messages}, ensure_ascii=False))


@pytest.fixture(scope="module")
def tiny(converted):
    return converted(Spec(), "q8_0").path


@pytest.fixture
def session(tiny):
    s = ChatSession(tiny, ctx=1024, sampling={"seed": 1}, max_tokens=16)
    yield s
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("reason,system,turns", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_prompt_tokens_equal_hf_apply_chat_template(reason, system, turns, converted, checkpoint, tmp_path):
    """The prompt chat evaluates == transformers' apply_chat_template with the same template and messages."""
    from transformers import AutoTokenizer

    spec = Spec(vocab="qwen3")
    hf = AutoTokenizer.from_pretrained(checkpoint(spec))
    write_conversation(tmp_path / "c.json", system, turns[:-1])
    with ChatSession(converted(spec, "q8_0").path, ctx=512, sampling={"seed": 0}, max_tokens=1) as s:
        s.load(tmp_path / "c.json")
        reply = s.send(turns[-1])
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
        ]
        expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        assert reply.prompt == list(expected)
        assert s.stop_tokens == {hf.convert_tokens_to_ids("<|im_end|>"), hf.convert_tokens_to_ids("<|endoftext|>")}
        reply.wait()


def test_stops_on_both_end_of_turn_tokens(session):
    """Marco's config names <|endoftext|>, its chat format ends turns with <|im_end|>: both stop a reply."""
    assert {session.token_text(t) for t in session.stop_tokens} == {"<|im_end|>", "<|endoftext|>"}
    assert session.template.from_gguf  # the GGUF's own template, not the fallback


def test_second_turn_evaluates_only_new_tokens(session):
    first = session.send("What is a mixture of experts?").wait()
    assert first.stats.cached_tokens == 0 and first.stats.prompt_tokens == len(first.prompt)
    second = session.send("And how are experts chosen?").wait()
    # the KV cache holds the first prompt and every reply token that was fed back (the last sampled one is not
    # when the reply stopped at --max-tokens)
    in_cache = len(first.prompt) + len(first.tokens) - (first.stats.stop_reason != "stop")
    assert second.stats.cached_tokens == in_cache
    assert second.prompt[: len(first.prompt) + len(first.tokens)] == first.prompt + first.tokens
    alone = len(session.prompt_tokens([{"role": "user", "content": "And how are experts chosen?"}]))
    # only the new turn: its tokens, the previous turn's "<|im_end|>\n" and at most one unfed reply token
    assert second.stats.prompt_tokens == len(second.prompt) - in_cache <= alone + 3
    assert session.totals.turns == 2 and session.totals.cached_tokens == in_cache
    assert session.context_tokens == len(second.prompt) + len(second.tokens) - (second.stats.stop_reason != "stop")


def test_reset_keeps_the_system_prompt_cached(tiny):
    with ChatSession(tiny, system="You are Marco.", ctx=1024, sampling={"seed": 1}, max_tokens=4) as s:
        first = s.send("Hello").wait()
        s.reset()
        again = s.send("Something else entirely").wait()
        system_tokens = len(s.prompt_tokens([{"role": "system", "content": "You are Marco."}]))
        assert s.messages[0]["content"] == "Something else entirely" and len(s.messages) == 2
        assert system_tokens - 5 <= again.stats.cached_tokens < len(first.prompt)


def test_nfd_input_is_normalized_before_tokenizing(tiny):
    with (
        ChatSession(tiny, ctx=512, sampling={"seed": 1}, max_tokens=1) as a,
        ChatSession(tiny, ctx=512, sampling={"seed": 1}, max_tokens=1) as b,
    ):
        ra, rb = a.send(NFD("Ça été")), b.send("Ça été")
        assert a.messages[0]["content"] == "Ça été" and ra.prompt == rb.prompt
        ra.wait(), rb.wait()


def test_overflow_drops_oldest_turns_never_the_system_message(tiny):
    with ChatSession(tiny, system="System message stays.", ctx=256, sampling={"seed": 1}, max_tokens=16) as s:
        dropped = []
        for i in range(8):
            reply = s.send(f"Turn {i}: " + "tell me more about experts and routing " * 6)
            dropped.append(reply.dropped_turns)
            reply.wait()
            assert s.context_tokens <= 256
        assert sum(dropped) > 0 and dropped[0] == 0
        assert s.conversation()[0] == {"role": "system", "content": "System message stays."}
        assert s.messages[0]["role"] == "user" and s.messages[-2]["content"].startswith("Turn 7")
        assert s.totals.dropped_turns == sum(dropped)


def test_message_longer_than_the_context_is_refused(tiny):
    with ChatSession(tiny, ctx=128, sampling={"seed": 1}, max_tokens=16) as s:
        with pytest.raises(
            ChatError, match=r"the message is too long: \d+ prompt tokens \+ 16 for the reply exceed --ctx 128"
        ):
            s.send("word " * 300)
        assert s.messages == []  # nothing was added


def test_interrupt_keeps_the_partial_reply_marked(tiny):
    with ChatSession(tiny, ctx=2048, sampling={"seed": 1, "temperature": 0}, max_tokens=1000) as s:
        reply = s.send("Tell me a long story.")
        pieces = []
        for piece in reply:
            pieces.append(piece)
            if len(pieces) == 5:
                reply.interrupt()
        assert reply.stats.stop_reason == "interrupted" and 5 <= reply.stats.completion_tokens < 1000
        assert s.messages[-1] == {"role": "assistant", "content": "".join(pieces), "interrupted": True}
        s.max_tokens = 4
        after = s.send("Go on.").wait()  # the conversation continues on the cached prefix
        assert after.stats.cached_tokens >= len(reply.prompt) and after.stats.prompt_tokens < 20


def test_a_half_read_reply_ends_interrupted_when_the_next_message_is_sent(session):
    reply = session.send("Hello")
    first_piece = next(iter(reply))
    session.send("Never mind.").wait()
    assert reply.stats.stop_reason == "interrupted" and reply.text.startswith(first_piece)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1] == {"role": "assistant", "content": reply.text, "interrupted": True}


def test_an_unread_reply_ends_interrupted_when_the_next_message_is_sent(tiny):
    """send() starts generating at once (on the engine's thread): a reply nobody reads is still ended and kept."""
    with ChatSession(tiny, ctx=2048, sampling={"seed": 1}, max_tokens=1000) as s:
        unread = s.send("Hello")
        after = s.send("Never mind.").wait()
        assert unread.stats.stop_reason == "interrupted" and after.stats.stop_reason in ("stop", "length")
        assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
        assert s.messages[1] == {"role": "assistant", "content": unread.text, "interrupted": True}
        s.send("And this one is left unread when the session closes.")


def test_save_and_load_round_trip(session, tmp_path):
    session.set_system("Be brief.")
    session.send("Hi").wait()
    saved = session.save(tmp_path / "chat.json")
    data = json.loads(saved.read_text())
    assert data["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant"]
    session.reset()
    session.set_system(None)
    assert session.load(saved) == 3
    assert session.conversation() == data["messages"]


BAD_SAVES = [
    ("missing file", None, "cannot read it"),
    ("not JSON", "{oops", "not a saved conversation (invalid JSON"),
    ("no messages list", '{"turns": []}', "not a saved conversation (no list of messages)"),
    ("unknown role", '[{"role": "robot", "content": "x"}]', 'message 1 is {"role": "robot"'),
    (
        "system message not first",
        '[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]',
        'message 2 is {"role": "system"',
    ),
    ("content not text", '[{"role": "user", "content": 3}]', 'message 1 is {"role": "user", "content": 3}'),
]


@pytest.mark.parametrize("reason,text,message", BAD_SAVES, ids=[b[0] for b in BAD_SAVES])
def test_load_refuses_what_save_did_not_write(reason, text, message, session, tmp_path):
    path = tmp_path / "c.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ChatError) as e:
        session.load(path)
    assert str(path) in e.value.message and message in e.value.message


def other_architecture(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BAD_MODELS = [
    ("missing file", lambda d, t: d / "nope.gguf", {}, GGUFFileError, "no such file"),
    (
        "not a GGUF",
        lambda d, t: (d / "x.gguf").write_text("hello") and d / "x.gguf",
        {},
        GGUFFileError,
        "not a GGUF file",
    ),
    (
        "another architecture",
        lambda d, t: other_architecture(d / "llama.gguf"),
        {},
        GGUFFileError,
        "architecture 'llama' is not qwen3moe",
    ),
    (
        "not enough RAM for the context",
        lambda d, t: t,
        {"available": 2**20},
        InsufficientMemoryError,
        "not enough RAM for --ctx 8192: needs about",
    ),
]


@pytest.mark.parametrize("reason,make,kw,error,message", BAD_MODELS, ids=[b[0] for b in BAD_MODELS])
def test_check_model_refuses_before_loading(reason, make, kw, error, message, tiny, tmp_path):
    with pytest.raises(error) as e:
        check_model(make(tmp_path, tiny), ctx=8192, **kw)
    assert message in e.value.message


def test_template_falls_back_to_chatml_only_when_the_gguf_has_none():
    t = ChatTemplate.from_metadata({"tokenizer.ggml.eos_token_id": "2"}, lambda i: f"<{i}>")
    assert not t.from_gguf and t.source == CHATML_TEMPLATE and t.special_tokens["eos_token"] == "<2>"
    assert t.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ChatError, match="the chat template refused this conversation \\(no\\)"):
        ChatTemplate("{{ raise_exception('no') }}").render([])


@pytest.mark.parametrize(
    "amx, extra_buffers",
    [
        (True, False),  # the AMX kernels crash in this llama.cpp: keep weights in plain buffers
        (False, True),  # no AMX kernels: llama.cpp's repacked buffers are safe and faster
    ],
)
def test_amx_guard_turns_extra_buffers_off_only_with_amx_and_restores_llama_cpp(monkeypatch, amx, extra_buffers):
    """load_model hands Llama() model_params(): extra buffer types off exactly when the AMX kernels are built."""
    import llama_cpp.llama_cpp as c

    from marco_gguf.llama import loader

    monkeypatch.setattr(loader, "amx_kernels_built", lambda: amx)
    before = c.llama_model_default_params
    with loader.without_extra_buffers():
        assert c.llama_model_default_params().use_extra_bufts is extra_buffers
    assert c.llama_model_default_params is before and c.llama_model_default_params().use_extra_bufts is True
