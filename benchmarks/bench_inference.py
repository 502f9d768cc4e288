"""Inference benchmark (issue 3, item 8): one run prints every figure.

Shape `small` (2+4+2 layers, width 256, 4 heads, GLU 768, vocab 4096), 8 core steps, 64-token
prompt, 64 new tokens, CPU, 2 threads. Baseline: transformers' LlamaForCausalLM with the same
materialised depth (2 + 4*8 + 2 = 36 layers) and width, measured in the same run; ratios are the
figures to compare across machines (the CPU is shared with other jobs, so absolute tok/s is noisy).

    python benchmarks/bench_inference.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import huginn  # noqa: F401
from huginn import RavenConfig, RavenForCausalLM, named_shape
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache

STEPS, PROMPT, NEW = 8, 64, 64


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours(model, B: int, prompt: int, new: int, repeats: int, policy=None, compile: bool = False) -> dict:
    ids = torch.randint(0, 4096, (B, prompt))
    depth = Depth(STEPS, init_scale=0.0)
    kw = dict(policy=policy, compile=compile)
    with torch.no_grad():
        t0 = time.perf_counter()
        generate(model, ids, depth, Stopping(new + 1), **kw)  # warm-up (and compilation, for this cache capacity)
        warmup = time.perf_counter() - t0
        prefill = best_of(lambda: generate(model, ids, depth, Stopping(1), **kw), repeats)
        total = best_of(lambda: generate(model, ids, depth, Stopping(new + 1), **kw), repeats)
        cache = generate(model, ids, depth, Stopping(new), **kw).cache
    decode = total - prefill  # `new` decode forwards after the prefill
    return {"prefill_tok_s": B * prompt / prefill, "decode_tok_s": B * new / decode, "kv_bytes": cache.memory_bytes(),
            "core_kv_bytes": cache.memory_bytes("core"), "warmup_s": warmup}


def matvec_floor(model, repeats: int) -> float:
    """Tokens/s if a batch-1 token cost only its matrix-vector products (every linear of the 36
    block calls and the head, weights as stored, same thread count): the bound the rest is judged by."""
    tr = model.transformer
    calls = [*tr.prelude, *[b for _ in range(STEPS) for b in tr.core_block], *tr.coda]
    weights = [m.weight for b in calls for m in (b.attn.Wqkv, b.attn.proj, b.mlp.fc, b.mlp.proj)] + [model.lm_head.weight]
    xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}
    with torch.no_grad():
        t = best_of(lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for _ in range(8) for w in weights], repeats) / 8
    return 1.0 / t


def llama(B: int, prompt: int, new: int, repeats: int, dtype) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=4,
                      num_hidden_layers=2 + 4 * STEPS + 2, vocab_size=4096, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    ids = torch.randint(0, 4096, (B, prompt))
    kw = dict(do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
        prefill = best_of(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw), repeats)
        total = best_of(lambda: model.generate(ids, max_new_tokens=new + 1, min_new_tokens=new + 1, **kw), repeats)
    return {"prefill_tok_s": B * prompt / prefill, "decode_tok_s": B * new / (total - prefill)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the issue measures at 2)")
    ap.add_argument("--quick", action="store_true", help="fewer tokens (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    new = 8 if args.quick else NEW
    torch.manual_seed(0)
    cfg = RavenConfig.from_model_config(named_shape("small", block_size=2048))
    base = RavenForCausalLM(cfg).eval()
    floor = matvec_floor(base, args.repeats)
    print(f"matrix-vector floor, fp32 batch 1: {floor:.1f} tok/s (the linears alone; {args.threads} threads)", flush=True)
    rows = []
    for B in (1, 8):
        r = ours(base, B, PROMPT, new, args.repeats, compile=True)
        e = ours(base, B, PROMPT, new, args.repeats)
        l = llama(B, PROMPT, new, args.repeats, torch.float32)
        extra = f", {100 * r['decode_tok_s'] / floor:.0f}% of the floor" if B == 1 else ""
        print(f"fp32 compiled batch {B}: decode {r['decode_tok_s']:8.1f} tok/s (eager {e['decode_tok_s']:.1f}, x{r['decode_tok_s'] / e['decode_tok_s']:.2f}; "
              f"llama-36 {l['decode_tok_s']:.1f}, x{r['decode_tok_s'] / l['decode_tok_s']:.2f}{extra})  first call incl. compilation "
              f"{r['warmup_s']:.1f} s", flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        model = base.to(dtype)
        for B in (1, 8):
            r, l = ours(model, B, PROMPT, new, args.repeats), llama(B, PROMPT, new, args.repeats, dtype)
            rows.append((str(dtype).split(".")[1], B, r, l))
            print(f"{rows[-1][0]:9s} batch {B}: decode {r['decode_tok_s']:8.1f} tok/s (llama-36 {l['decode_tok_s']:7.1f}, "
                  f"x{r['decode_tok_s'] / l['decode_tok_s']:.2f})  prefill {r['prefill_tok_s']:8.1f} tok/s "
                  f"(llama-36 {l['prefill_tok_s']:7.1f}, x{r['prefill_tok_s'] / l['prefill_tok_s']:.2f})  "
                  f"KV {r['kv_bytes'] / 2**20:.2f} MiB", flush=True)
        base = base.float()
    model = base.float()
    short = ours(model, 1, PROMPT, new, args.repeats)
    long = ours(model, 1, 1024 - new - 1, new, max(1, args.repeats - 1))
    print(f"fp32 batch 1 decode at ~1024 context: {long['decode_tok_s']:.1f} tok/s = "
          f"{100 * long['decode_tok_s'] / short['decode_tok_s']:.0f}% of the speed at 64 ({short['decode_tok_s']:.1f})")
    cshort = ours(model, 1, PROMPT, new, args.repeats, compile=True)
    clong = ours(model, 1, 1024 - new - 1, new, max(1, args.repeats - 1), compile=True)
    print(f"fp32 compiled batch 1 decode at ~1024 context: {clong['decode_tok_s']:.1f} tok/s = "
          f"{100 * clong['decode_tok_s'] / cshort['decode_tok_s']:.0f}% of the speed at 64 ({cshort['decode_tok_s']:.1f})")
    mc = model.model_config
    full = HuginnStaticCache.for_model(model, 1, 32, PROMPT + NEW, CachePolicy())
    s8 = HuginnStaticCache.for_model(model, 1, 32, PROMPT + NEW, CachePolicy.parse("compress-s8"))
    print(f"core KV at 32 steps, {PROMPT + NEW} tokens: full {full.memory_bytes('core') / 2**20:.2f} MiB, compress-s8 "
          f"{s8.memory_bytes('core') / 2**20:.2f} MiB ({full.memory_bytes('core') / s8.memory_bytes('core'):.0f}x smaller); "
          f"whole cache {full.memory_bytes() / s8.memory_bytes():.1f}x smaller ({mc.n_layers_in_prelude}+{mc.n_layers_in_coda} "
          "prelude/coda slots are not shared)")
    s8run = ours(model, 1, PROMPT, new, 1, CachePolicy.parse("compress-s8"))
    print(f"compress-s8 decode (8 steps): {s8run['decode_tok_s']:.1f} tok/s, KV {s8run['kv_bytes'] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
