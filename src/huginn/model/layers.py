"""Building blocks: RMSNorm, rotary embeddings, attention, gated MLP, and the block types.

Numerics follow the published Huginn-0125 code where exactness needs it:
- RMSNorm normalises in fp32, casts back to the input dtype, then multiplies by the weight;
- the qk bias is added before RoPE; RoPE rotates interleaved pairs (2i, 2i+1) in fp32;
- the GLU's fc rows [0:I] are the SiLU gate, rows [I:2I] the linear branch.
Non-goals: KV-cache storage (a cache object is passed in through `AttentionContext`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from huginn.config import ModelConfig
from huginn.model.products import Linear


class KVCache(Protocol):
    """What attention needs from a KV cache. `slot` is the block call's cache slot, numbered by
    `huginn.model.slots.SlotLayout` (writing slot 0 begins a forward)."""

    def update(self, key: Tensor, value: Tensor, slot: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store this call's keys/values (B, KVH, S, hd); return all keys/values for the slot and an
        optional (B, S_kv) bool mask of valid key positions (None: all valid)."""
        ...

    def get_seq_length(self) -> int: ...


@dataclass
class AttentionContext:
    """Per-forward inputs shared by every attention call."""

    rope: Tensor  # (B or 1, S, 1, hd/2, 2) cos/sin rows for the query positions
    mask: Tensor | None  # (B or 1, 1, S, S_kv) bool, True = attend; None: see is_causal
    is_causal: bool  # with mask None: causal (S == S_kv) or full (S == 1)
    cache: KVCache | None = None
    # single-query attention written out as matmuls (`single_query_attention`) instead of SDPA:
    # cheaper inside a fused graph, slower in eager mode
    written_out: bool = False


# how a group of blocks runs: (blocks, x, ctx, slots) -> x. The model's pieces take one as an
# argument (`run=`), so a caller may run each group as one compiled call without the model knowing
BlockRunner = Callable[[nn.ModuleList, Tensor, AttentionContext, list[int]], Tensor]


def run_blocks(blocks: nn.ModuleList, x: Tensor, ctx: AttentionContext, slots: list[int]) -> Tensor:
    """The default `BlockRunner`: run `blocks` in order, block i writing KV slot `slots[i]`."""
    for block, slot in zip(blocks, slots):
        x = block(x, ctx, slot)
    return x


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self._norm(x)
        return self._norm(x)  # entering an autocast context costs more than the norm in decoding

    def _norm(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_table(head_dim: int, length: int, base: float, scaling: dict | None = None) -> Tensor:
    """(1, length, 1, head_dim/2, 2) table of (cos, sin), fp32, as the published `freqs_cis` buffer."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32)[: head_dim // 2] / head_dim))
    if scaling is not None:
        inv_freq = scale_inv_freq(inv_freq, scaling)
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq).float()
    return torch.stack([torch.cos(freqs)[None, :, None, :], torch.sin(freqs)[None, :, None, :]], dim=4)


def scale_inv_freq(inv_freq: Tensor, scaling: dict) -> Tensor:
    """Llama-3 frequency-dependent RoPE scaling (the only scaling the supported bases use)."""
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"unsupported rope scaling {kind!r}; supported: llama3")
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate interleaved pairs of x (B, S, H, hd) in fp32 and cast back: `rope_complex` in eager
    mode, `rope_real` inside compiled graphs (which inductor fuses). Both give the same bits."""
    return rope_real(x, rope) if torch.compiler.is_compiling() else rope_complex(x, rope)


def rope_complex(x: Tensor, rope: Tensor) -> Tensor:
    """The pairs as complex numbers times the (cos, sin) rows as complex numbers: one kernel instead
    of four products, two sums and a stack (a copy), and the same in the backward. The same
    products and sums as `rope_real`: ATen's complex product forms ac - bd and ad + bc without
    fused multiply-adds. A table in bf16 or fp16 (a model cast to it) is widened first, as the real
    form's products widen it."""
    if rope.dtype not in (torch.float32, torch.float64):
        rope = rope.float()
    pairs_c = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, S, H, hd/2) complex64
    return torch.view_as_real(pairs_c * torch.view_as_complex(rope)).flatten(3).type_as(x)


def rope_real(x: Tensor, rope: Tensor) -> Tensor:
    """`rope_complex` written out in real arithmetic (the published form)."""
    pairs = x.unflatten(-1, (-1, 2)).float()  # (B, S, H, hd/2, 2)
    cos, sin = rope[..., 0], rope[..., 1]
    rotated = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1
    ).flatten(3)
    return rotated.type_as(x)


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> Tensor:
    """(q_len, kv_len) bool, lower-right aligned: query i sees keys up to kv_len - q_len + i."""
    q = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return torch.arange(kv_len, device=device)[None, :] <= q


def single_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one query per row, q (B, H, 1, hd) over k, v (B, KV, T, hd), written out as two
    matmuls and a softmax. Inside a compiled decoding graph inductor fuses it with its neighbours;
    the library SDPA kernel's fixed cost per call is larger than the whole computation at decode
    sizes (measured: +11% tokens/s at batch 1). `mask` (B or 1, 1, 1, T) bool, True = attend; every
    row must keep at least one key (its own)."""
    B, H, _, hd = q.shape
    KV = k.shape[1]
    qg = (q * (1.0 / math.sqrt(hd))).reshape(B, KV, H // KV, hd)  # query heads grouped by their KV head
    scores = (qg @ k.transpose(-1, -2)).float()  # (B, KV, H/KV, T); softmax in fp32, as SDPA's
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1).to(v.dtype) @ v).reshape(B, H, 1, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.Wqkv = Linear(cfg.n_embd, (self.n_heads + 2 * self.n_kv) * self.hd, bias=False)
        self.qk_bias: nn.Parameter | None
        self.q_norm: RMSNorm | None
        self.k_norm: RMSNorm | None
        if cfg.qk_bias:
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.n_heads, self.hd))
        else:
            self.qk_bias = None
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.n_heads * self.hd, cfg.norm_eps)
            self.k_norm = RMSNorm(self.n_kv * self.hd, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.proj = Linear(self.n_heads * self.hd, cfg.n_embd, bias=False)

    def heads(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q, k, v) of input `x`, (B, S, H | KV, hd), q and k after qk norm or bias and RoPE: the
        one definition of what attends (analysis recomputes attention probabilities from it)."""
        B, S, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv, self.hd
        qkv = self.Wqkv(x)
        v = qkv[..., (H + KV) * hd :].view(B, S, KV, hd)
        if self.q_norm is None and (self.qk_bias is None or KV == H):
            # q and k side by side as H + KV heads: one bias add and one RoPE call (decoding is op-bound)
            qk = qkv[..., : (H + KV) * hd].view(B, S, H + KV, hd)
            if self.qk_bias is not None:
                qk = qk + self.qk_bias.view(2 * H, hd)  # rows [q heads | k heads], as published
            q, k = apply_rope(qk, rope).split([H, KV], dim=2)
            return q, k, v
        q, k = qkv[..., : (H + KV) * hd].split([H * hd, KV * hd], dim=-1)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(B, S, H, hd), k.view(B, S, KV, hd)
        if self.qk_bias is not None:
            q, k = q + self.qk_bias[0], k + self.qk_bias[1]
        return apply_rope(q, rope), apply_rope(k, rope), v

    def forward(self, x: Tensor, ctx: AttentionContext, slot: int) -> Tensor:
        B, S, _ = x.shape
        q, k, v = self.heads(x, ctx.rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, hd)
        mask, is_causal = ctx.mask, ctx.is_causal
        if ctx.cache is not None:
            k, v, valid = ctx.cache.update(k, v, slot)
            if valid is not None:
                base = mask if mask is not None else causal_mask(S, k.shape[2], x.device)[None, None]
                # the current tokens were just written, so every query keeps at least its own key
                mask = base & valid[:, None, None, :]
        if mask is not None:
            is_causal = False
        if S == 1 and ctx.written_out:
            y = single_query_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal and S > 1, enable_gqa=self.n_kv != self.n_heads
            )
        return self.proj(y.transpose(1, 2).reshape(B, S, self.n_heads * self.hd))


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)  # rows [gate | up]
        self.proj = Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class SandwichBlock(nn.Module):
    """Huginn's block: x = n2(attn(n1(x)) + x); x = n4(mlp(n3(x)) + x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_1, self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps), RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.norm_3, self.norm_4 = RMSNorm(cfg.n_embd, cfg.norm_eps), RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp = GatedMLP(cfg)

    def forward(self, x: Tensor, ctx: AttentionContext, slot: int) -> Tensor:
        x = self.norm_2(self.attn(self.norm_1(x), ctx, slot) + x)
        return self.norm_4(self.mlp(self.norm_3(x)) + x)


class _TwoNormBlock(nn.Module):
    """Attention, MLP and two norms; subclasses place the norms."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_1, self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps), RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp = GatedMLP(cfg)


class PreNormBlock(_TwoNormBlock):
    """Llama's block: x = x + attn(n1(x)); x = x + mlp(n2(x))."""

    def forward(self, x: Tensor, ctx: AttentionContext, slot: int) -> Tensor:
        x = x + self.attn(self.norm_1(x), ctx, slot)
        return x + self.mlp(self.norm_2(x))


class PostNormBlock(_TwoNormBlock):
    """OLMo-2's block: x = x + n1(attn(x)); x = x + n2(mlp(x))."""

    def forward(self, x: Tensor, ctx: AttentionContext, slot: int) -> Tensor:
        x = x + self.norm_1(self.attn(x, ctx, slot))
        return x + self.norm_2(self.mlp(x))


BLOCKS: dict[str, type[nn.Module]] = {"sandwich": SandwichBlock, "prenorm": PreNormBlock, "postnorm": PostNormBlock}
