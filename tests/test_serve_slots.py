"""Slot choice keeps conversations cached (issue 26, item 1): interleaved multi-turn chats on a real engine,
each turn's cached prompt tokens checked against its previous turn, and what /metrics says per slot.
llama-server's rule (slots.choose_slot) is the reference: a slot's cache is reused only when it shares
more than --slot-prompt-similarity of the prompt, else an empty slot, else the least recently used."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from checkpoints import Spec
from serving import live, request

from marco_gguf.base.errors import ServeError
from marco_gguf.llama.engine import Engine, Sampling
from marco_gguf.llama.slots import choose_slot

GREEDY = Sampling(temperature=0.0)
TOPICS = {
    "A": "sailing ships",
    "B": "tax law",
    "C": "baking bread",
    "D": "chess openings",
    "E": "volcanoes",
    "X": "rivers",
    "Y": "clocks",
}
SHARED = "You are a helpful assistant. Answer briefly, in plain words, and say when you are unsure. " * 6

# (reason, slots, --slot-prompt-similarity, one system prompt for all chats, steps)
# A step is a chat's next turn: "A" grows chat A by one user message (and the reply it gets), a lowercase
# "x" sends chat x's first prompt again unchanged. After ":" what its cached tokens must be: kept (at least
# the previous prompt of that chat), lost (under half of it: its slot went to another chat), whole (all
# but the last token, which must be evaluated for its logits).
CASES = [
    ("the issue's case: two chats alternating on two slots", 2, 0.5, False, "A B A:kept B:kept A:kept B:kept"),
    (
        "four chats interleaved on four slots, in changing order",
        4,
        0.5,
        False,
        "A B C D B:kept A:kept D:kept C:kept A:kept C:kept B:kept D:kept",
    ),
    (
        "two chats sharing a long system prompt: the second takes the empty slot, not the first's",
        2,
        0.5,
        True,
        "A B A:kept B:kept A:kept B:kept",
    ),
    (
        "two chats sharing a system prompt after two others ended: the stale slots are taken, in turn",
        2,
        0.5,
        True,
        "X Y A B A:kept B:kept A:kept B:kept",
    ),
    (
        "three chats sharing a system prompt on four slots",
        4,
        0.5,
        True,
        "A B C A:kept C:kept B:kept A:kept",
    ),
    ("identical prompts X, Y, X, Y reuse their slots", 2, 0.5, False, "x y x:whole y:whole x:whole y:whole"),
    (
        "a regenerated reply: its prompt sent again reuses its slot though an empty one is idle",
        2,
        0.5,
        False,
        "x x:whole x:whole",
    ),
    (
        "three chats on two slots: the least recently used one (B) is evicted",
        2,
        0.5,
        False,
        "A B A:kept C A:kept B:lost",
    ),
    (
        "five chats on four slots: the least recently used one (A) is evicted",
        4,
        0.5,
        False,
        "A B C D B:kept C:kept D:kept E A:lost D:kept E:kept",
    ),
    ("similarity 0 turns matching off (llama-server): the oldest slot, here the empty one", 2, 0.0, False, "A A:lost"),
    ("one slot (chat) keeps the prefix whatever the similarity", 1, 0.0, False, "A A:kept A:kept"),
]


@dataclass
class Chat:
    system: str
    messages: list[dict] = field(default_factory=list)
    last_prompt: int = 0


def _run(engine: Engine, steps: str, shared: bool) -> list[tuple[str, int, int, int]]:
    """(step, its prompt's tokens, cached tokens, the chat's previous prompt's tokens) per step."""
    chats: dict[str, Chat] = {}
    rows = []
    for step in steps.split():
        name = step.split(":")[0]
        chat = chats.setdefault(name, Chat(SHARED if shared else f"You are an expert on {TOPICS[name.upper()]}. " * 8))
        if name.isupper() or not chat.messages:
            chat.messages.append({"role": "user", "content": f"Question {len(chat.messages) // 2 + 1} from {name}?"})
        prompt = engine.tokenize(engine.template.render([{"role": "system", "content": chat.system}, *chat.messages]))
        result = engine.submit(prompt, max_tokens=8, sampling=GREEDY).wait()
        if name.isupper():
            chat.messages.append({"role": "assistant", "content": result.text})
        rows.append((step, len(prompt), result.timings.cache_n, chat.last_prompt))
        chat.last_prompt = len(prompt)
    return rows


@pytest.fixture(scope="module")
def path(converted):
    return converted(Spec(dtype="f32"), "f32").path


@pytest.mark.parametrize("reason,slots,similarity,shared,steps", CASES, ids=[c[0] for c in CASES])
def test_interleaved_chats_keep_their_cache(reason, slots, similarity, shared, steps, path):
    with Engine(path, ctx=4096, parallel=slots, threads=2, slot_prompt_similarity=similarity) as engine:
        rows = _run(engine, steps, shared)
        m = engine.metrics()
    for step, prompt, cached, previous in rows:
        expect = step.partition(":")[2]
        assert {
            "": True,
            "kept": cached >= previous,
            "lost": cached < previous / 2,
            "whole": cached == prompt - 1,
        }[expect], f"{step}: {cached} of {prompt} tokens cached, previous prompt {previous}: {rows}"
    chats = {s.split(":")[0] for s in steps.split()}
    moves = steps.count(":lost")  # a chat that lost its slot went on in another one
    assert sum(map(bool, m.slot_cache_tokens)) == min(len(chats) + moves, slots), m.slot_cache_tokens
    assert sum(m.slot_cache_tokens) == m.kv_cache_tokens


@dataclass
class Slot:
    cache: list[int]
    prompt_len: int
    last_used: float


# (reason, idle slots as (cache, prompt length, last used), prompt, similarity, index of the slot chosen)
CHOICES = [
    ("a share exactly at the threshold is not enough (llama-server compares with >)", [([1, 2, 3, 4], 4, 1), ([], 0, 0)], [1, 2, 8, 9], 0.5, 1),
    ("above it the slot is reused", [([1, 2, 3, 4], 4, 1), ([], 0, 0)], [1, 2, 3, 9], 0.5, 0),
    ("the largest share wins among those above it", [([1, 2, 3, 7], 2, 1), ([1, 2, 3, 4, 5], 2, 2)], [1, 2, 3, 4, 9], 0.5, 1),
    ("no empty slot: the least recently used", [([5, 5], 2, 3), ([6, 6], 2, 1), ([7, 7], 2, 2)], [1, 2, 3], 0.5, 1),
    ("an empty slot comes before the least recently used", [([5, 5], 2, 1), ([], 0, 2)], [1, 2, 3], 0.5, 1),
    ("parting inside the slot's last prompt with an empty slot idle: the empty one", [([1, 2, 3, 4, 5, 6], 5, 1), ([], 0, 0)], [1, 2, 3, 4, 9, 9], 0.5, 1),
    ("parting inside its last reply: a continuation, the slot is reused", [([1, 2, 3, 4, 5, 6], 3, 1), ([], 0, 0)], [1, 2, 3, 4, 9, 9], 0.5, 0),
    ("parting inside its last prompt, no empty slot: the least recently used one", [([1, 2, 3, 4, 5, 6], 5, 1), ([8], 1, 0)], [1, 2, 3, 4, 9, 9], 0.5, 1),
    ("parting inside its last prompt of the least recently used slot: reused", [([1, 2, 3, 4, 5, 6], 5, 1), ([8], 1, 2)], [1, 2, 3, 4, 9, 9], 0.5, 0),
    ("similarity 0: the least recently used, even over a whole match", [([1, 2, 3], 3, 2), ([8], 1, 1)], [1, 2, 3], 0.0, 1),
]  # fmt: skip


@pytest.mark.parametrize("reason,slots,prompt,similarity,chosen", CHOICES, ids=[c[0] for c in CHOICES])
def test_choose_slot(reason, slots, prompt, similarity, chosen):
    idle = [Slot(*s) for s in slots]
    assert choose_slot(idle, prompt, similarity) is idle[chosen]


def test_metrics_report_each_slots_cache(path):
    with Engine(path, ctx=4096, parallel=3, threads=2) as engine, live(engine) as server:
        rows = _run(engine, "A B A B", shared=True)
        _, _, body = request(server.url, "GET", "/metrics")
        m = engine.metrics()
    lines = [line for line in body.decode().splitlines() if line.startswith("marco_gguf_slot_kv_cache_tokens{")]
    assert lines == [f'marco_gguf_slot_kv_cache_tokens{{slot="{i}"}} {n}' for i, n in enumerate(m.slot_cache_tokens)]
    assert m.slot_cache_tokens[2] == 0 and min(m.slot_cache_tokens[:2]) >= rows[-1][1], (m, rows)


def test_similarity_out_of_range_is_refused(path):
    with pytest.raises(
        ServeError, match=r"^--slot-prompt-similarity 1\.5: expected 0 to 1 \(0: always the oldest slot\)$"
    ):
        Engine(path, ctx=256, parallel=1, slot_prompt_similarity=1.5)
