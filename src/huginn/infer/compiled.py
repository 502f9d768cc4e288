"""Compiled single-token decoding: each group of blocks (prelude, one core step, coda) is one graph.

Decoding a token of the benchmark shape makes 36 block calls (2 + 4 x 8 + 2), and in eager PyTorch
each is about 40 small operators whose dispatch costs more than the matrix-vector products. Here
the prelude, each core step and the coda are one compiled call each (10 calls per token instead of
36 blocks x 40 operators): inductor fuses the norms, RoPE, residuals, SiLU and cache writes into a
few kernels; the matmuls stay library calls. Blocks are instances of one class, so dynamo lifts
their weights to graph inputs: one graph serves all core steps, one the prelude and the coda (same
depth). A new batch size or cache capacity recompiles once; dynamo then treats it as dynamic.

Attention gets a `SlotKV` (this slot's preallocated keys/values, the write column as a tensor, the
mask of filled columns) instead of the cache object: the graph reads the whole capacity under that
mask, so its shapes never change as the context grows, and none of the cache's Python bookkeeping
is traced. That bookkeeping (begin a token, record its steps) runs in `CompiledRunner`, in Python,
exactly as the eager cache does it.

Used by `generate(..., compile=True)` for single-token forwards when no row is frozen and the
lookup is not `skip`; every other forward runs eagerly. Results equal eager decoding up to float
rounding (tests: compiled == eager in tokens, KV entries and step counts). Non-goals: compiling the
prefill (one call per prompt, already matmul-bound); training (`train.compile` compiles its blocks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from huginn.model.layers import AttentionContext


class SlotKV:
    """The KV-cache protocol for one storage slot, traced into the compiled graph."""

    def __init__(self, k: Tensor, v: Tensor, col: Tensor, valid: Tensor) -> None:
        self.k, self.v, self.col, self.valid = k, v, col, valid

    def update(self, key: Tensor, value: Tensor, slot: int) -> tuple[Tensor, Tensor, Tensor]:
        self.k.index_copy_(2, self.col, key)
        self.v.index_copy_(2, self.col, value)
        return self.k, self.v, self.valid

    def get_seq_length(self) -> int:  # the runner resolves positions before the graph runs
        return 0


def _blocks_call(blocks: nn.ModuleList, x: Tensor, rope: Tensor, kvs: list[SlotKV]) -> Tensor:
    for block, kv in zip(blocks, kvs):
        x = block(x, AttentionContext(rope, None, False, kv), 0)
    return x


_compiled = None


def compiled_block_call():
    """The process-wide compiled graph function (compiled lazily, on first use)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_blocks_call, fullgraph=True)
    return _compiled


def can_compile(cache, seq_len: int, freezes_rows: bool) -> bool:
    """Whether a forward of `seq_len` tokens can run compiled with this cache: a single token, no
    row frozen now or during the forward (`freezes_rows`: batched early exits), no `skip` lookup."""
    return seq_len == 1 and not freezes_rows and cache.active_rows is None and cache.policy.lookup != "skip"


class CompiledRunner:
    """`AttentionContext.runner` for one single-token forward: resolves each block call's storage
    slot, keeps the cache's bookkeeping, and runs the block through the compiled graph.
    `attention_mask` (B, past + 1) marks real tokens in padded batches (None: all real)."""

    def __init__(self, cache, attention_mask: Tensor | None) -> None:
        self.cache, self.attention_mask = cache, attention_mask
        self.fn = compiled_block_call()  # looked up per forward, so tests can spy on it
        self.col = self.valid = None

    def _begin(self) -> None:
        c = self.cache
        c._begin(1)
        cap, device = c.capacity, c.device
        self.col = torch.tensor([c.length - 1], device=device)
        valid = torch.arange(cap, device=device)[None, :] < c.length
        if self.attention_mask is not None:
            keep = torch.zeros(c.rows, cap, dtype=torch.bool, device=device)
            keep[:, : c.length] = self.attention_mask.to(device=device, dtype=torch.bool)
            valid = valid & keep
        self.valid = valid.expand(c.rows, cap).contiguous()

    def __call__(self, blocks: nn.ModuleList, x: Tensor, ctx: AttentionContext, slots: list[int]) -> Tensor:
        c = self.cache
        kvs = []
        for slot in slots:
            if slot == 0:
                self._begin()
            i = c.storage_index(slot)
            if c.P <= slot and (slot - c.P) % c.R == 0:
                c._record_step((slot - c.P) // c.R + 1)
            kvs.append(SlotKV(c.k[i], c.v[i], self.col, self.valid))
        return self.fn(blocks, x, ctx.rope, kvs)
