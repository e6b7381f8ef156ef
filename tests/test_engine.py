"""The continuous-batching engine: batched slots give each request what it gets alone, prefixes are
reused, stop strings cut, cancellation frees the slot, and requests that cannot run are refused."""

from __future__ import annotations

import pytest
from checkpoints import Spec

from marco_gguf.base.errors import RequestError, ServerBusyError
from marco_gguf.llama.engine import Engine, Sampling

GREEDY = Sampling(temperature=0.0)
PROMPTS = ["Hello there, how are", "The capital of France", "def fib(n):", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def engine(converted):
    with Engine(converted(Spec(dtype="f32"), "f32").path, ctx=1024, parallel=4, threads=2) as e:
        yield e


def test_concurrent_requests_get_what_each_gets_alone(engine):
    prompts = [engine.tokenize(p) for p in PROMPTS]
    alone = [engine.submit(p, max_tokens=24, sampling=GREEDY).wait().tokens for p in prompts]
    jobs = [engine.submit(p, max_tokens=24, sampling=GREEDY) for p in prompts]
    together = [j.wait().tokens for j in jobs]
    assert together == alone
    assert all(len(t) == 24 for t in alone)  # random weights rarely end a turn: each ran to max_tokens


def test_a_continued_prompt_reuses_the_slot_cache(engine):
    prompt = engine.tokenize("A long shared prefix that the second request continues")
    first = engine.submit(prompt, max_tokens=4, sampling=GREEDY).wait()
    longer = prompt + list(first.tokens) + engine.tokenize(" and more")
    second = engine.submit(longer, max_tokens=4, sampling=GREEDY).wait()
    assert second.timings.cache_n >= len(prompt)
    assert second.timings.cache_n + second.timings.prompt_n == len(longer)


def test_stop_string_cuts_the_text(engine):
    prompt = engine.tokenize(PROMPTS[0])
    full = engine.submit(prompt, max_tokens=24, sampling=GREEDY).wait()
    stop = full.text[len(full.text) // 2 :][:3]
    assert stop.strip()
    cut = engine.submit(prompt, max_tokens=24, sampling=GREEDY, stop=[stop]).wait()
    assert (cut.text, cut.finish_reason) == (full.text[: full.text.index(stop)], "stop")


def test_cancel_frees_the_slot(engine):
    job = engine.submit(engine.tokenize(PROMPTS[1]), max_tokens=500, sampling=GREEDY)
    next(iter(job))
    job.cancel()
    assert job.wait().finish_reason == "cancelled"
    assert engine.metrics().busy_slots == 0


def test_no_token_after_a_cancel_during_decode(engine, monkeypatch):
    """Reason: Ctrl-C in chat printed one more token: the batch being decoded when the request was cancelled
    still sampled and sent one."""
    job = engine.submit(engine.tokenize(PROMPTS[2]), max_tokens=500, sampling=GREEDY)
    next(iter(job))  # generating
    real, sent = engine._lib, []

    class CancelDuringDecode:  # llama.cpp, except that the request is cancelled while a batch decodes
        def __getattr__(self, name):
            return getattr(real, name)

        def llama_decode(self, ctx, batch):
            if not sent:
                sent.append(len(job.tokens))
                job.cancel()
            return real.llama_decode(ctx, batch)

    monkeypatch.setattr(engine, "_lib", CancelDuringDecode())
    result = job.wait()
    monkeypatch.setattr(engine, "_lib", real)
    assert result.finish_reason == "cancelled" and len(result.tokens) == sent[0]


REFUSED = [  # (reason, prompt length, error, message fragment)
    ("an empty prompt", 0, RequestError, "the prompt is empty"),
    ("a prompt longer than the context", 1024, RequestError, "the prompt is 1,024 tokens, the context holds 1,024"),
]


@pytest.mark.parametrize("reason,n,error,fragment", REFUSED, ids=[r[0] for r in REFUSED])
def test_requests_that_cannot_run_are_refused(reason, n, error, fragment, engine):
    with pytest.raises(error, match=fragment):
        engine.submit([1] * n)


def test_full_queue_is_refused(converted):
    with (
        Engine(converted(Spec(dtype="f32"), "f32").path, ctx=256, parallel=1, threads=1, queue_size=0) as e,
        pytest.raises(ServerBusyError, match=r"the queue is full \(0 requests waiting\)"),
    ):
        e.submit(e.tokenize("hi"))


def test_direct_use_is_lent_only_when_idle_and_forgets_the_caches(engine):
    """bench times llama_decode on the engine's context: not while a request runs, no request meanwhile,
    and the slots' caches (which direct use overwrote) are not trusted afterwards."""
    prompt = engine.tokenize(PROMPTS[2])
    engine.submit(prompt, max_tokens=2, sampling=GREEDY).wait()
    running = engine.submit(engine.tokenize(PROMPTS[3]), max_tokens=500, sampling=GREEDY)
    next(iter(running))
    with pytest.raises(ServerBusyError, match="the engine is busy with requests"), engine.exclusive():
        pass
    running.cancel()
    running.wait()
    with engine.exclusive(threads=1) as direct:
        assert (direct.n_batch, direct.n_vocab) == (engine.batch, engine.n_vocab)
        with pytest.raises(ServerBusyError, match=r"lent out for direct use \(bench\)"):
            engine.submit(prompt)
        assert engine.kv_tokens(0) == 0
    again = engine.submit(prompt, max_tokens=2, sampling=GREEDY).wait()
    assert again.timings.cache_n == 0 and again.finish_reason == "length"
