"""Which idle slot a request goes to, so that conversations keep their KV cache between turns.

llama-server's rule (tools/server/server-context.cpp, `get_available_slot`, and its
`--slot-prompt-similarity`): reuse the idle slot whose cache shares the largest part of the prompt, if
that part (the longest common prefix over the prompt's length) is above the threshold; else take the
least recently used idle slot, which is an empty one while any is left (llama-server's never-used
slots have t_last_used -1). A request no longer goes to a slot only because a few tokens of a chat
template's header match, which evicted that slot's conversation while another slot stood empty.

One addition: while an empty slot is idle, a slot is passed over when the prompt parts from it inside
what its last client sent (its last prompt), unless it holds the whole prompt: that slot holds
another conversation (or an earlier version of this one). llama-server saves such a cache to its
host-memory prompt cache (`--cache-ram`) before reusing the slot; this engine has none, so two
conversations that share a long system prompt would otherwise take turns evicting each other from
one slot. Parting inside the last reply is a continuation (the reply re-tokenized) or a regeneration,
and reuses the slot.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def choose_slot(idle: Sequence[S], prompt: Sequence[int], similarity: float) -> S:
    """The slot of `idle` (not empty) that `prompt` should run in; `similarity` 0 turns prefix matching
    off (the least recently used slot always), as in llama-server."""
    empty = [s for s in idle if not s.cache]
    best, best_sim = None, similarity
    for slot in idle if similarity > 0 else ():
        if not slot.cache:
            continue
        n = common_prefix(slot.cache, prompt)
        another = n < min(slot.prompt_len, len(prompt) - 1)  # parts inside what its last client sent
        if n / len(prompt) > best_sim and not (empty and another):
            best, best_sim = slot, n / len(prompt)
    if best is not None:
        return best
    return empty[0] if empty else min(idle, key=lambda s: s.last_used)
