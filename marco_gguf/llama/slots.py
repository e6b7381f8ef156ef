"""Which idle slot a request goes to, so that conversations keep their KV cache between turns.

llama-server's rule (tools/server/server-context.cpp, `get_available_slot`, and its
`--slot-prompt-similarity`): reuse the idle slot whose cache shares the largest part of the prompt, if
that part (the longest common prefix over the prompt's length) is above the threshold; else take the
least recently used idle slot, which is an empty one while any is left (llama-server's never-used
slots have t_last_used -1). A request no longer goes to a slot only because a few tokens of a chat
template's header match, which evicted that slot's conversation while another slot stood empty.

One addition: a request is not put into a slot whose last prompt it departs from (that slot holds
another conversation, or an earlier version of this one, behind a shared system prompt) unless that
slot is the least recently used idle one: the least recently used slot is taken instead, an empty one
while any is left. llama-server saves such a cache to its host-memory prompt cache (`--cache-ram`)
before reusing the slot; this engine has none, so two conversations that share a long system prompt
would otherwise take turns evicting each other from one slot while another slot held an older
conversation. Departing inside the slot's last reply is a continuation (the reply re-tokenized) or a
regeneration, and reuses the slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from marco_gguf.base.errors import ServeError

SLOT_PROMPT_SIMILARITY = 0.5  # llama-server's default before its host-memory prompt cache lowered it to 0.1


class Cached(Protocol):
    cache: list[int]  # the tokens of this slot's sequence in the KV cache
    prompt_len: int  # how many of them are the prompt of its last request (the rest is its reply)
    last_used: float  # when its last request ended (0: never)


S = TypeVar("S", bound=Cached)


def check_similarity(similarity: float) -> None:
    """`serve` asks before it binds its port, the engine again."""
    if not 0.0 <= similarity <= 1.0:
        raise ServeError(f"--slot-prompt-similarity {similarity}: expected 0 to 1 (0: always the oldest slot)")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def choose_slot(
    idle: Sequence[S], prompt: Sequence[int], similarity: float, usable: Callable[[S], bool] = lambda s: True
) -> S:
    """The slot of `idle` (not empty) that `prompt` should run in; `similarity` 0 turns prefix matching
    off (the least recently used slot always), as in llama-server. A slot whose cache is not `usable` (made
    under other LoRA scales) shares no prefix with the prompt."""
    oldest = min(idle, key=lambda s: (bool(s.cache), s.last_used))  # empty slots first
    best, best_sim = None, similarity
    for slot in idle if similarity > 0 else ():
        if not slot.cache or not usable(slot):
            continue
        n = common_prefix(slot.cache, prompt)
        another = n < min(slot.prompt_len, len(prompt) - 1)  # departs inside what its last client sent
        if n / len(prompt) > best_sim and not (another and slot is not oldest):
            best, best_sim = slot, n / len(prompt)
    return oldest if best is None else best
