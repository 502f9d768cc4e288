"""Parameter counts by part and FLOPs per token, computed from a `ModelConfig` alone.

No weights are built, so the 3.5B published shape is counted instantly. "Materialized" parameters
count what a token passes through: the core and the adapter once per step. FLOPs per token are
2 x materialized matmul parameters (the embedding lookup is free, the head is not) plus attention
over `context` previous tokens (4 x context x attention width per layer call).
"""

from __future__ import annotations

from dataclasses import dataclass

from huginn.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    prelude: int
    adapter: int
    core: int
    coda: int
    final_norm: int
    head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.prelude + self.adapter + self.core + self.coda + self.final_norm + self.head

    def materialized(self, num_steps: int) -> int:
        """Parameters a token passes through at `num_steps` (core and adapter counted per step)."""
        return self.total + (num_steps - 1) * (self.core + self.adapter)


def block_params(cfg: ModelConfig) -> int:
    d, hd, h, kv = cfg.n_embd, cfg.dim_head, cfg.n_heads, cfg.kv_heads
    attn = d * (h + 2 * kv) * hd + h * hd * d
    if cfg.qk_bias:
        attn += 2 * h * hd
    if cfg.qk_norm:
        attn += (h + kv) * hd
    mlp = d * 2 * cfg.intermediate_size + cfg.intermediate_size * d
    norms = (4 if cfg.block_type == "sandwich" else 2) * d
    return attn + mlp + norms


def param_counts(cfg: ModelConfig) -> ParamCounts:
    per_block = block_params(cfg)
    vocab_d = cfg.padded_vocab_size * cfg.n_embd
    return ParamCounts(
        embedding=vocab_d,
        prelude=cfg.n_layers_in_prelude * per_block,
        adapter=2 * cfg.n_embd * cfg.n_embd if cfg.injection_type == "linear" else 0,
        core=cfg.n_layers_in_recurrent_block * per_block,
        coda=cfg.n_layers_in_coda * per_block,
        final_norm=cfg.n_embd,
        head=0 if cfg.tie_embeddings else vocab_d,
    )


def flops_per_token(cfg: ModelConfig, num_steps: int, context: int = 0) -> int:
    """Forward FLOPs for one token at `num_steps`, attending to `context` tokens."""
    pc = param_counts(cfg)
    norms = (4 if cfg.block_type == "sandwich" else 2) * cfg.n_embd
    matmul_per_block = block_params(cfg) - norms - (2 * cfg.n_heads * cfg.dim_head if cfg.qk_bias else 0)
    n_blocks = cfg.n_layers_in_prelude + cfg.n_layers_in_coda + num_steps * cfg.n_layers_in_recurrent_block
    matmul = n_blocks * matmul_per_block + num_steps * pc.adapter + cfg.padded_vocab_size * cfg.n_embd
    attention = 4 * n_blocks * context * cfg.n_heads * cfg.dim_head
    return 2 * matmul + attention
