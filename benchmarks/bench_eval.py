"""Evaluation speed: huginn's lm-eval model against lm-eval's `--model hf` on a Llama of the same
materialized depth, in one run, same batch size, fp32 CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_eval.py [--questions 24] [--docs 6] [--reps 2]

- multiple choice: questions of 4 choices, contexts of ~256 tokens, choices of ~8 tokens (random
  ids: speed does not depend on the words). huginn computes a context shared by its choices once
  and reuses its KV for each choice; lm-eval's hf model (and the reference) recompute it per choice.
- rolling log-likelihood: documents of ~1,000 tokens in lm-eval's disjoint windows of max_length 256.

The recurrent model is the 2+4+2 width-256 shape (`small`) at 8 steps: 2 + 8 x 4 + 2 = 36 layer
calls per token; the Llama has 36 layers of the same width, heads, GLU width and vocabulary. Both
adapters get pre-tokenized requests (`_loglikelihood_tokens`, which `loglikelihood` and
`loglikelihood_rolling` call after tokenizing), so tokenization is not timed. Each timing is the
best of `--reps` runs, the two models alternating. Prints requests/s and huginn's ratio.

huginn's products go through the kernel `huginn.model.products` picks for this host (oneDNN where
it is faster than `F.linear`'s BLAS, e.g. on AMD processors); the run also times huginn on
`F.linear`, the kernel the `hf` model uses, so the ratio at equal kernels is printed beside the
ratio users get. After the rolling task it prints the products each model computes there (the
cost model's FLOPs: matmul weights and causal attention; the Llama's are huginn's without the
adapter), the rate each achieved, and the best rate of each kernel on the model's own weight
shapes on this host.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def models(steps: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from huginn import RavenConfig, RavenForCausalLM, named_shape

    mc = named_shape("small", mean_recurrence=steps)
    torch.manual_seed(0)
    huginn = RavenForCausalLM(RavenConfig.from_model_config(mc)).eval()
    layers = mc.n_layers_in_prelude + steps * mc.n_layers_in_recurrent_block + mc.n_layers_in_coda
    cfg = LlamaConfig(
        vocab_size=mc.padded_vocab_size,
        hidden_size=mc.n_embd,
        intermediate_size=mc.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=mc.n_heads,
        num_key_value_heads=mc.n_kv_heads,
        max_position_embeddings=mc.block_size,
        tie_word_embeddings=mc.tie_embeddings,
    )
    llama = LlamaForCausalLM(cfg).eval()
    return huginn, llama, layers


def tokenizer():
    from tests.eval.eval_helpers import char_tokenizer

    return char_tokenizer()


def mc_requests(n: int, vocab: int, seed: int = 0):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        ctx = [rng.randrange(3, vocab) for _ in range(rng.randint(240, 272))]
        for _ in range(4):
            cont = [rng.randrange(3, vocab) for _ in range(rng.randint(6, 10))]
            reqs.append((None, ctx, cont))
    return reqs


def rolling_requests(n: int, vocab: int, max_length: int, seed: int = 1):
    from lm_eval import utils

    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        doc = [rng.randrange(3, vocab) for _ in range(rng.randint(900, 1100))]
        for c, x in map(utils.make_disjoint_window, utils.get_rolling_token_windows(doc, 2, max_length, 1)):
            reqs.append((None, c, x))
    return reqs


def product_flops(cfg, steps: int, lengths: list[int]) -> tuple[float, float]:
    """(huginn, Llama) FLOPs of forwards over sequences of `lengths` tokens: the cost model's matmul
    weights plus causal attention (a query at position i attends to i + 1 keys). The Llama of equal
    materialized depth has the same blocks and head and no adapter."""
    from huginn.model.cost import flops_per_token, param_counts

    adapter = 2 * steps * param_counts(cfg).adapter  # FLOPs per token
    per_key = flops_per_token(cfg, steps, context=1) - flops_per_token(cfg, steps, context=0)  # attention
    huginn = sum(n * flops_per_token(cfg, steps, context=0) for n in lengths)
    attention = sum(per_key * n * (n + 1) / 2 for n in lengths)
    return huginn + attention, huginn - adapter * sum(lengths) + attention


def gemm_rate(model, row_counts: tuple[int, ...], product) -> float:
    """The best FLOP/s of `product(x, weight)` here over the model's own weight shapes and
    `row_counts` input rows (a whole batch's tokens, one sequence's)."""
    import itertools

    from huginn.model.products import best_time

    best = 0.0
    weights = {tuple(m.weight.shape): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    with torch.inference_mode():
        for rows, w in itertools.product(row_counts, weights.values()):
            x = torch.randn(rows, w.shape[1])
            best = max(best, 2 * rows * w.shape[0] * w.shape[1] / best_time(lambda x=x, w=w: product(x, w)))
    return best


def timed(lm, reqs) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))

    from lm_eval.models.huggingface import HFLM

    from huginn.eval.lm import HuginnLM
    from huginn.model import products

    chosen = products.onednn_faster()

    huginn, llama, layers = models(args.steps)
    tok = tokenizer()
    ours = HuginnLM(pretrained=huginn, tokenizer=tok, num_steps=args.steps, batch_size=args.batch_size, max_length=512)
    hf = HFLM(pretrained=llama, tokenizer=tok, batch_size=args.batch_size, max_length=512, device="cpu")
    vocab = huginn.model_config.vocab_size
    print(
        f"huginn small (2+4+2, width 256) at {args.steps} steps vs Llama with {layers} layers; fp32, "
        f"batch {args.batch_size}, {torch.get_num_threads()} thread(s); huginn's products on "
        f"{'oneDNN' if chosen else 'F.linear'} (huginn.model.products' choice for this host)"
    )
    for name, reqs, lm_max in (
        (f"multiple choice ({args.questions} x 4 choices, ctx ~256, choices ~8)", mc_requests(args.questions, vocab), 512),
        (f"rolling ({args.docs} docs of ~1000 tokens, windows of {args.max_length})",
         rolling_requests(args.docs, vocab, args.max_length), args.max_length),
    ):  # fmt: skip
        ours._max_length = lm_max
        hf._max_length = lm_max
        t_ours, t_same, t_hf = float("inf"), float("inf"), float("inf")
        for kernel in (chosen, False):
            with products.forced(kernel):
                timed(ours, reqs[: args.batch_size])  # warm-up
        timed(hf, reqs[: args.batch_size])
        for _ in range(args.reps):
            t_ours = min(t_ours, timed(ours, reqs))
            with products.forced(False):
                t_same = min(t_same, timed(ours, reqs))
            t_hf = min(t_hf, timed(hf, reqs))
        r_ours, r_same, r_hf = (len(reqs) / t for t in (t_ours, t_same, t_hf))
        print(f"{name}: {len(reqs)} requests")
        print(
            f"  huginn {r_ours:8.2f} req/s   lm-eval hf (Llama) {r_hf:8.2f} req/s   ratio {r_ours / r_hf:.2f}x"
            f"   (huginn on F.linear, hf's kernel: {r_same:.2f} req/s, {r_same / r_hf:.2f}x)"
        )
    # the rolling task's products and the rate each model achieved on them
    f_ours, f_hf = product_flops(huginn.model_config, args.steps, [len(c) + len(x) - 1 for _, c, x in reqs])
    rows = (args.batch_size * args.max_length, args.max_length)
    blas = gemm_rate(huginn, rows, torch.nn.functional.linear)
    onednn = gemm_rate(huginn, rows, products.onednn_linear)
    print(
        f"  products: huginn {f_ours / 1e9:.0f} GFLOP at {f_ours / t_ours / 1e9:.0f} GFLOP/s "
        f"({f_ours / t_same / 1e9:.0f} on F.linear), the Llama {f_hf / 1e9:.0f} GFLOP at {f_hf / t_hf / 1e9:.0f} "
        f"GFLOP/s; best rate on the model's weight shapes here: F.linear {blas / 1e9:.0f}, oneDNN {onednn / 1e9:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
