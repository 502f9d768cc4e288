"""Inference benchmark (issue 3, item 8): one run prints every figure.

Shape `small` (2+4+2 layers, width 256, 4 heads, GLU 768, vocab 4096), 8 core steps, 64-token
prompt, 64 new tokens, CPU, 2 threads. Baseline: transformers' LlamaForCausalLM with the same
materialised depth (2 + 4*8 + 2 = 36 layers) and width, measured in the same run. fp32 compiled
decoding is also measured with its linears on BLAS instead of huginn's packed kernel, and the fp32
prefill with its products on `F.linear` (BLAS) instead of the kernel `huginn.model.products`
picks for this host.

The host's speed drifts by 30% and more over minutes, so every comparison is measured in
interleaved rounds (each round times every contender once) and each contender keeps its best round:
a slow phase then hits all contenders alike. Ratios are the figures to compare across machines.

    python benchmarks/bench_inference.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import types
from collections.abc import Callable
from contextlib import contextmanager

import torch

import huginn  # noqa: F401
from huginn import RavenConfig, RavenForCausalLM, named_shape
from huginn.infer import compiled, packed_linear
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.model import products

STEPS, PROMPT, NEW = 8, 64, 64

Timer = Callable[[], tuple[float, float]]  # one measurement: (prefill seconds, prefill + decode seconds)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours(model, B: int, prompt: int, new: int, policy=None, compile: bool | str = False) -> tuple[Timer, dict]:
    """A timer for our generation, after a warm-up (which compiles, for this cache capacity)."""
    ids = torch.randint(0, 4096, (B, prompt))
    depth = Depth(STEPS, init_scale=0.0)
    kw = dict(policy=policy, compile=compile)
    with torch.no_grad():
        warmup = timed(lambda: generate(model, ids, depth, Stopping(new + 1), **kw))
        cache = generate(model, ids, depth, Stopping(new), **kw).cache

    def once() -> tuple[float, float]:
        with torch.no_grad():
            return (
                timed(lambda: generate(model, ids, depth, Stopping(1), **kw)),
                timed(lambda: generate(model, ids, depth, Stopping(new + 1), **kw)),
            )

    return once, {"kv_bytes": cache.memory_bytes(), "warmup_s": warmup, "tokens": (B * prompt, B * new)}


def blas(model, B: int, prompt: int, new: int) -> tuple[Timer, dict]:
    """`ours(compile=True)` with the linears on BLAS (column-major weights) instead of huginn's
    packed kernel, as where the kernel cannot be built: its own copy of the token graph, so the two
    variants do not share (and recompile) one dynamo cache."""
    own = torch.compile(
        types.FunctionType(compiled._token_call.__code__.replace(), compiled._token_call.__globals__, "blas_token"),
        fullgraph=True,
        options={"cpp_wrapper": True},
    )

    kernel, shared = packed_linear.available(), compiled.compiled_graph("token")

    @contextmanager
    def on_blas():
        packed_linear._state["ok"], compiled._compiled["token"] = False, own
        try:
            yield
        finally:
            packed_linear._state["ok"], compiled._compiled["token"] = kernel, shared

    with on_blas():
        once, info = ours(model, B, prompt, new, compile=True)

    def timer() -> tuple[float, float]:
        with on_blas():
            return once()

    return timer, info


def on_f_linear(timer: tuple[Timer, dict]) -> tuple[Timer, dict]:
    """`timer` with the model's products on `F.linear` (`products.forced(False)`)."""
    once, info = timer

    def forced() -> tuple[float, float]:
        with products.forced(False):
            return once()

    return forced, info


def llama(B: int, prompt: int, new: int, dtype) -> tuple[Timer, dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=768,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2 + 4 * STEPS + 2,
        vocab_size=4096,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    ids = torch.randint(0, 4096, (B, prompt))
    kw = dict(do_sample=False, pad_token_id=0)

    def gen(n: int):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)

    with torch.no_grad():
        gen(2)

    def once() -> tuple[float, float]:
        with torch.no_grad():
            return timed(lambda: gen(1)), timed(lambda: gen(new + 1))

    return once, {"tokens": (B * prompt, B * new)}


def matvec_floor(model) -> tuple[Timer, dict]:
    """Tokens/s if a batch-1 token cost only its BLAS matrix-vector products (`F.linear` on every
    linear of the 36 block calls and the head, weights as stored, same thread count): the bound
    the issue judges by. huginn's packed kernel is faster than BLAS on these products, so compiled
    decoding comes closer to this figure than the products' share of a token would suggest."""
    tr = model.transformer
    calls = [*tr.prelude, *[b for _ in range(STEPS) for b in tr.core_block], *tr.coda]
    weights = [m.weight.detach() for b in calls for m in (b.attn.Wqkv, b.attn.proj, b.mlp.fc, b.mlp.proj)]
    weights.append(model.lm_head.weight.detach())
    xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}

    def once() -> tuple[float, float]:
        with torch.no_grad():
            return 0.0, timed(
                lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for _ in range(8) for w in weights]
            )

    return once, {"tokens": (0, 8)}


def rounds(contenders: dict[str, tuple[Timer, dict]], repeats: int) -> dict[str, dict]:
    """Interleaved rounds; each contender's best prefill and best total give its tok/s."""
    best: dict[str, list[float]] = {name: [float("inf"), float("inf")] for name in contenders}
    for _ in range(repeats):
        for name, (once, _) in contenders.items():
            pre, total = once()
            best[name] = [min(best[name][0], pre), min(best[name][1], total)]
    out = {}
    for name, (_, info) in contenders.items():
        pre, total = best[name]
        n_pre, n_new = info["tokens"]
        out[name] = {**info, "prefill_tok_s": n_pre / pre if pre else 0.0, "decode_tok_s": n_new / (total - pre)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per comparison")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the issue measures at 2)")
    ap.add_argument("--quick", action="store_true", help="fewer tokens (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    new = 8 if args.quick else NEW
    R = args.repeats
    torch.manual_seed(0)
    cfg = RavenConfig.from_model_config(named_shape("small", block_size=2048))
    model = RavenForCausalLM(cfg).eval()

    for B in (1, 8):
        c = {
            "compiled": ours(model, B, PROMPT, new, compile=True),
            "blas": blas(model, B, PROMPT, new),
            "eager": ours(model, B, PROMPT, new),
            "eager-f.linear": on_f_linear(ours(model, B, PROMPT, new)),
            "llama": llama(B, PROMPT, new, torch.float32),
        }
        if B == 1:
            c["floor"] = matvec_floor(model)
        r = rounds(c, R)
        comp, bl, eager, ll = (r[k]["decode_tok_s"] for k in ("compiled", "blas", "eager", "llama"))
        floor = ""
        if B == 1:
            floor = f", {100 * comp / r['floor']['decode_tok_s']:.0f}% of the BLAS matvec floor {r['floor']['decode_tok_s']:.1f}"
        print(
            f"fp32 batch {B}: compiled decode {comp:7.1f} tok/s (x{comp / ll:.2f} llama-36 {ll:.1f}; x{comp / bl:.2f} "
            f"the same on BLAS {bl:.1f}; x{comp / eager:.2f} eager {eager:.1f}, which is x{eager / ll:.2f} llama{floor}); "
            f"first call incl. compilation {r['compiled']['warmup_s']:.1f} s",
            flush=True,
        )
        pre, pre_blas, pre_ll = (r[k]["prefill_tok_s"] for k in ("eager", "eager-f.linear", "llama"))
        print(
            f"fp32 batch {B}: prefill {pre:8.1f} tok/s (x{pre / pre_ll:.2f} llama-36 {pre_ll:.1f}; x{pre / pre_blas:.2f} "
            f"products on F.linear {pre_blas:.1f}, which is x{pre_blas / pre_ll:.2f} llama; "
            f"products on {'oneDNN' if products.onednn_faster() else 'F.linear'})  KV {r['eager']['kv_bytes'] / 2**20:.2f} MiB",
            flush=True,
        )

    bf = model.to(torch.bfloat16)
    for B in (1, 8):
        r = rounds(
            {
                "frozen": ours(bf, B, PROMPT, new, compile="frozen"),
                "compiled": ours(bf, B, PROMPT, new, compile=True),
                "eager": ours(bf, B, PROMPT, new),
                "llama": llama(B, PROMPT, new, torch.bfloat16),
            },
            R,
        )
        fr, comp, o, ll = (r[k]["decode_tok_s"] for k in ("frozen", "compiled", "eager", "llama"))
        print(
            f"bf16 batch {B}: frozen decode {fr:7.1f} tok/s (x{fr / ll:.2f} llama-36 {ll:.1f}; x{fr / comp:.2f} compiled "
            f"{comp:.1f}; x{fr / o:.2f} eager {o:.1f}); first call incl. compilation {r['frozen']['warmup_s']:.1f} s",
            flush=True,
        )
        print(
            f"bf16 batch {B}: prefill {r['eager']['prefill_tok_s']:8.1f} tok/s (x{r['eager']['prefill_tok_s'] / r['llama']['prefill_tok_s']:.2f} "
            f"llama-36)  KV {r['eager']['kv_bytes'] / 2**20:.2f} MiB",
            flush=True,
        )
    model = bf.float()

    long_prompt = 1024 - new - 1
    r = rounds(
        {
            "eager 64": ours(model, 1, PROMPT, new),
            "eager 1024": ours(model, 1, long_prompt, new),
            "compiled 64": ours(model, 1, PROMPT, new, compile=True),
            "compiled 1024": ours(model, 1, long_prompt, new, compile=True),
        },
        max(1, R - 1),
    )
    for kind in ("eager", "compiled"):
        s, long = r[f"{kind} 64"]["decode_tok_s"], r[f"{kind} 1024"]["decode_tok_s"]
        print(
            f"fp32 batch 1 {kind} decode at ~1024 context: {long:.1f} tok/s = {100 * long / s:.0f}% of the speed at 64 ({s:.1f})",
            flush=True,
        )

    mc = model.model_config
    full = HuginnStaticCache.for_model(model, 1, 32, PROMPT + NEW, CachePolicy())
    s8 = HuginnStaticCache.for_model(model, 1, 32, PROMPT + NEW, CachePolicy.parse("compress-s8"))
    print(
        f"core KV at 32 steps, {PROMPT + NEW} tokens: full {full.memory_bytes('core') / 2**20:.2f} MiB, compress-s8 "
        f"{s8.memory_bytes('core') / 2**20:.2f} MiB ({full.memory_bytes('core') / s8.memory_bytes('core'):.0f}x smaller); "
        f"whole cache {full.memory_bytes() / s8.memory_bytes():.1f}x smaller ({mc.n_layers_in_prelude}+{mc.n_layers_in_coda} "
        "prelude/coda slots are not shared)"
    )
    r = rounds({"s8": ours(model, 1, PROMPT, new, CachePolicy.parse("compress-s8"), compile=True)}, 1)["s8"]
    print(f"compress-s8 compiled decode (8 steps): {r['decode_tok_s']:.1f} tok/s, KV {r['kv_bytes'] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
