"""Serving throughput: vLLM (`full` and `shared` KV) against huginn's own batched `generate`.

    python benchmarks/bench_serve.py [--requests 64] [--steps 8] [--threads 1] [--compile]

64 requests of mixed prompt (16-512 tokens) and output (16-128 tokens) lengths on the `small`
shape (2+4+2 layers, width 256, 4 heads of 64) at 8 steps, CPU fp32, random weights and token
ids, greedy with no stop token: total generated tokens per second through `vllm.LLM` (continuous
batching; every request its own output length) and through one `model.generate` call over the
whole batch (left-padded prompts, every row decoding to the longest output; only each request's
own tokens count). Also each KV mode's KV bytes per token and the tokens vLLM's KV cache holds.
Needs vLLM (the `vllm` extra); runs in one process. Non-goal: a GPU configuration (pass
`--device cuda` on a machine with one, unchanged otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _requests(n: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(16, 513, (1,), generator=g))
        o = int(torch.randint(16, 129, (1,), generator=g))
        out.append((torch.randint(3, vocab, (p,), generator=g).tolist(), o))
    return out


def _huginn(model, reqs, steps: int, device: str) -> tuple[float, int]:
    import torch

    width = max(len(p) for p, _ in reqs)
    ids = torch.zeros(len(reqs), width, dtype=torch.long)
    mask = torch.zeros(len(reqs), width, dtype=torch.long)
    for i, (p, _) in enumerate(reqs):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    max_new = max(o for _, o in reqs)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            num_steps=steps,
            init_scale=0.0,
            max_new_tokens=max_new,
            do_sample=False,
            cache_lookup_strategy="full",
        )
    return time.perf_counter() - t0, sum(o for _, o in reqs)


def _vllm(path: Path, reqs, steps: int, kv_mode: str, compile: bool, dtype: str) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from huginn.serve.options import ServeOptions

    t0 = time.perf_counter()
    llm = LLM(
        model=str(path),
        skip_tokenizer_init=True,
        enforce_eager=not compile,
        dtype=dtype,
        max_model_len=1024,
        hf_overrides=ServeOptions(steps, kv_mode).hf_overrides(1024),  # type: ignore[arg-type]
        seed=0,
    )
    load = time.perf_counter() - t0
    prompts = [TokensPrompt(prompt_token_ids=p) for p, _ in reqs]
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True, detokenize=False) for _, o in reqs]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    cache = llm.llm_engine.vllm_config.cache_config
    blocks = getattr(cache, "num_gpu_blocks", None) or getattr(cache, "num_cpu_blocks", None)
    capacity = blocks * cache.block_size if blocks else None
    llm.llm_engine.engine_core.shutdown()
    del llm
    return {"seconds": seconds, "tokens": tokens, "load_seconds": load, "kv_cache_tokens": capacity}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="let vLLM torch.compile the model (not --enforce-eager)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-huginn", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from huginn import RavenConfig, RavenForCausalLM, named_shape
    from huginn.model.slots import SlotLayout
    from huginn.serve.options import KV_MODES, ServeOptions
    from huginn.serve.plugin import register

    register()
    mc = named_shape("small", mean_recurrence=args.steps)
    torch.manual_seed(args.seed)
    model = RavenForCausalLM(RavenConfig.from_model_config(mc)).eval().to(args.device)
    reqs = _requests(args.requests, mc.vocab_size, args.seed)
    results: dict = {
        "shape": "small (2+4+2, width 256, 4x64 heads)",
        "steps": args.steps,
        "requests": args.requests,
        "prompt_tokens": sum(len(p) for p, _ in reqs),
        "output_tokens": sum(o for _, o in reqs),
        "threads": args.threads,
        "device": args.device,
    }
    layout = SlotLayout.of(mc)
    for mode in KV_MODES:
        opts = ServeOptions(args.steps, mode)
        results[f"kv_bytes_per_token_{mode}_fp32"] = opts.kv_bytes_per_token(layout, mc.n_kv_heads, mc.head_dim, 4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small"
        model.save_pretrained(str(path))
        for mode in KV_MODES:
            r = _vllm(path, reqs, args.steps, mode, args.compile, "float32")
            results[f"vllm_{mode}"] = {**r, "tokens_per_s": r["tokens"] / r["seconds"]}
            print(json.dumps({mode: results[f"vllm_{mode}"]}), flush=True)
    if not args.skip_huginn:
        seconds, tokens = _huginn(model, reqs, args.steps, args.device)
        results["huginn_batched"] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        results["speedup_full"] = results["vllm_full"]["tokens_per_s"] / results["huginn_batched"]["tokens_per_s"]
        results["speedup_shared"] = results["vllm_shared"]["tokens_per_s"] / results["huginn_batched"]["tokens_per_s"]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
