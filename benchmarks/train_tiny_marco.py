"""Train a tiny Marco-shaped model, so that quantization quality (KL divergence) can be measured on real weights.

Random weights make every quant look alike (their next-token distributions are near uniform), so
benchmarks/quality.py needs a model that has learned something. This trains transformers' own
`Qwen3MoeForCausalLM` with Marco's structure at a small width:

- 4 layers, hidden 256, 4 query / 2 KV heads of head_dim 128 (Marco's head_dim), 64 experts with
  8 active and norm_topk_prob (Marco's routing), moe_intermediate 256, tied embeddings (as Marco).
  Every quantized matrix has rows of 256 or 512 (hidden 256 for q/k/v/gate/up/embeddings,
  moe_intermediate 256 for ffn_down, 4 x 128 for attn_output), so each K-quant preset applies its
  own types, without the row-size fallbacks a 384-wide Nano row would take.
- The real Qwen3 vocabulary (151,936 rows), rebuilt offline by marco_gguf.synth.qwen_vocab.
- Text on this machine: the standard library sources of the system Python (/usr/lib/python3.11,
  code and docstrings, tests excluded) and the license texts in /usr/share/common-licenses. Files
  are split by a hash of their path: about 1 in 16 stdlib files is held out as the evaluation
  text (eval.txt beside the checkpoint), never trained on.
- Torch on ONE thread (the machine is shared) for a fixed wall-clock budget (default 15 minutes),
  AdamW with a cosine learning rate over elapsed time, the router's load-balancing loss on.
- The output layer is the cost on one thread: a full 151,936-way softmax makes a step of 2,048
  tokens take ~25 s, 80 % of it in the head. So the loss is a sampled softmax (Jean et al. 2015):
  every token id that occurs in the training text (the targets' only possible values) plus
  NEGATIVES ids drawn uniformly from the rest of the vocabulary, whose logits are raised by
  ln(rest / NEGATIVES) so that the sum estimates the full softmax's normaliser and the unseen
  tokens are pushed down as a full softmax would. The final loss is reported with the full
  softmax on held-out sequences (train_log.json: eval_loss_full_softmax).

    python benchmarks/train_tiny_marco.py [--minutes 15] [--out ~/.cache/marco-gguf/tiny-marco]

Writes the checkpoint (save_pretrained, BF16 as Marco's release, plus tokenizer files), eval.txt
and train_log.json (steps, tokens, losses) into --out. Needs the test extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from marco_gguf.synth.qwen_vocab import write_tokenizer_files

STDLIB = Path("/usr/lib/python3.11")
LICENSES = Path("/usr/share/common-licenses")
EVAL_EVERY = 16  # 1 in 16 stdlib files (by path hash) is evaluation text
SEQ, BATCH = 512, 2  # tokens per sequence (as quality.py's -c 512 scores), sequences per step
PEAK_LR, WARMUP = 3e-3, 0.03  # warm-up as a fraction of the time budget
NEGATIVES = 4096  # sampled ids from outside the training text's tokens, per step
MODEL = dict(  # Marco's structure, small: see the module docstring
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=128,
    num_experts=64,
    num_experts_per_tok=8,
    moe_intermediate_size=256,
    intermediate_size=768,
    norm_topk_prob=True,
    tie_word_embeddings=True,
    vocab_size=151936,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    output_router_logits=True,
    router_aux_loss_coef=0.01,
)


def corpus_files() -> tuple[list[Path], list[Path]]:
    """(training files, evaluation files): stdlib split by path hash; the licenses are training text."""
    stdlib = sorted(
        p
        for p in STDLIB.rglob("*.py")
        if not {"test", "tests", "idle_test", "site-packages", "dist-packages"} & set(p.parts)
    )
    held_out = [p for p in stdlib if zlib.crc32(str(p.relative_to(STDLIB)).encode()) % EVAL_EVERY == 0]
    train = [p for p in stdlib if p not in set(held_out)] + sorted(p for p in LICENSES.iterdir() if p.is_file())
    return train, held_out


def read_texts(files: list[Path]) -> list[str]:
    out = []
    for p in files:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are Latin-1 test data; skip them
    return out


def token_stream(tok: Tokenizer, texts: list[str], eot: int) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids += tok.encode(t).ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


def lr_at(fraction: float) -> float:
    if fraction < WARMUP:
        return PEAK_LR * fraction / WARMUP
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * min(1.0, (fraction - WARMUP) / (1 - WARMUP))))


class SampledSoftmax:
    """Next-token loss over the ids the text can produce plus uniformly drawn negatives (see the docstring)."""

    def __init__(self, data: torch.Tensor, vocab: int, gen: torch.Generator) -> None:
        self.seen = torch.unique(data)
        mask = torch.ones(vocab, dtype=torch.bool)
        mask[self.seen] = False
        self.rest = torch.nonzero(mask).squeeze(1)
        self.index = torch.full((vocab,), -1, dtype=torch.long)
        self.index[self.seen] = torch.arange(len(self.seen))
        self.correction = math.log(len(self.rest) / NEGATIVES)
        self.gen = gen

    def __call__(self, model: Qwen3MoeForCausalLM, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.model(input_ids=batch, output_router_logits=True)
        h = out.last_hidden_state[:, :-1].reshape(-1, out.last_hidden_state.shape[-1])
        neg = self.rest[torch.randint(0, len(self.rest), (NEGATIVES,), generator=self.gen)]
        logits = h @ model.lm_head.weight[torch.cat([self.seen, neg])].T
        logits[:, len(self.seen) :] += self.correction
        loss = torch.nn.functional.cross_entropy(logits, self.index[batch[:, 1:].reshape(-1)])
        cfg = model.config
        aux = load_balancing_loss_func(out.router_logits, cfg.num_experts, cfg.num_experts_per_tok)
        return loss + cfg.router_aux_loss_coef * aux, loss


def full_softmax_loss(model: Qwen3MoeForCausalLM, batch: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=batch).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).item()


def train(out: Path, minutes: float, seed: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    info = write_tokenizer_files(out, kind="qwen3")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    train_files, eval_files = corpus_files()
    eval_text = "\n\n".join(read_texts(eval_files))
    (out / "eval.txt").write_text(eval_text, encoding="utf-8")
    data = token_stream(tok, read_texts(train_files), info.endoftext_id)
    held_out = token_stream(tok, read_texts(eval_files), info.endoftext_id)
    cfg = Qwen3MoeConfig(**MODEL, bos_token_id=info.bos_token_id, eos_token_id=info.endoftext_id)
    model = Qwen3MoeForCausalLM(cfg).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR,
        betas=(0.9, 0.95),
    )
    budget, start, log = minutes * 60, time.monotonic(), []
    gen = torch.Generator().manual_seed(seed)
    objective, step = SampledSoftmax(data, cfg.vocab_size, gen), 0
    while (elapsed := time.monotonic() - start) < budget:
        for group in opt.param_groups:
            group["lr"] = lr_at(elapsed / budget)
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[s : s + SEQ] for s in starts])
        total, loss = objective(model, batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 5 == 0 or step == 1:
            log.append({"step": step, "seconds": round(elapsed, 1), "loss": round(loss.item(), 4)})
            print(f"step {step} {elapsed:.0f}s loss {loss.item():.3f}", flush=True)
    model.eval()
    probe = torch.stack([held_out[i * SEQ : (i + 1) * SEQ] for i in range(4)])  # the eval text's first 4 x SEQ tokens
    eval_loss = full_softmax_loss(model, probe)
    model.to(torch.bfloat16).save_pretrained(out)
    summary = {
        "eval_loss_full_softmax": round(eval_loss, 4),
        "softmax_ids": len(objective.seen) + NEGATIVES,
        "steps": step,
        "tokens_seen": step * BATCH * SEQ,
        "train_tokens": len(data),
        "eval_chars": len(eval_text),
        "seconds": round(time.monotonic() - start, 1),
        "train_files": len(train_files),
        "eval_files": len(eval_files),
        "torch_threads": 1,
        "model": MODEL,
        "seq": SEQ,
        "batch": BATCH,
        "peak_lr": PEAK_LR,
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "marco-gguf" / "tiny-marco")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    s = train(args.out.expanduser(), args.minutes, args.seed)
    print(
        f"trained {s['steps']} steps ({s['tokens_seen']:,} tokens of {s['train_tokens']:,}) in {s['seconds']} s; "
        f"last loss {s['log'][-1]['loss'] if s['log'] else '?'}; saved to {args.out}"
    )


if __name__ == "__main__":
    main()
