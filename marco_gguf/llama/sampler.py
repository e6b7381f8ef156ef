"""llama.cpp's C sampler chain for one request or conversation: the stages and their order in one place."""

from __future__ import annotations

PENALTY_LAST_N = 64  # llama.cpp's default window for --repeat-penalty


def sampler_chain(
    n_vocab: int,
    *,
    temp: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    grammar=None,
):
    """llama.cpp's C sampler chain (free it with llama_sampler_free): a grammar (an initialised
    llama_sampler_init_grammar, owned by the chain from here on) first so that only tokens it allows are
    candidates, penalties, then top-k first, which keeps the later stages cheap on a 151,936-token
    vocabulary, top-p, min-p, temperature, draw."""
    import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    penalize = repeat_penalty != 1.0 or presence_penalty != 0.0 or frequency_penalty != 0.0
    stages = [
        grammar,
        lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, repeat_penalty, frequency_penalty, presence_penalty)
        if penalize
        else None,
    ]
    if temp <= 0:
        stages.append(lib.llama_sampler_init_greedy())
    else:
        stages += [
            lib.llama_sampler_init_top_k(top_k) if top_k > 0 else None,
            lib.llama_sampler_init_top_p(top_p, 1) if top_p < 1 else None,
            lib.llama_sampler_init_min_p(min_p, 1) if min_p > 0 else None,
            lib.llama_sampler_init_temp(temp),
            lib.llama_sampler_init_dist(seed if seed is not None else lib.LLAMA_DEFAULT_SEED),
        ]
    for stage in filter(None, stages):
        lib.llama_sampler_chain_add(chain, stage)
    return chain
