"""The one cost model: parameter counts by part and FLOPs per token, from a `ModelConfig` alone.

No weights are built, so the 3.5B published shape is counted instantly. `huginn info`, the demo
and the training metrics (tokens/s, TFLOP/s, MFU) all count with these functions.

"Materialized" parameters count what a token passes through: the core and the adapter once per
step. Forward FLOPs per token are 2 x the materialized matmul weights (the embedding lookup is
free, the head is not; norms and biases are not matmuls) plus attention over `context` previous
tokens (4 x context x attention width per layer call). A training step runs every step forward and
back-propagates (2 x forward) through the grad steps only:

    train = forward(n + k steps) + 2 x forward(k steps)
          = 6 x (prelude + k x core + coda + head) + 2 x n x core    (matmul weights, no attention)

for n no-grad and k grad steps, `core` = the core blocks plus the adapter (retrofitted-recurrence
accounting). Recomputation under activation checkpointing is not counted (model FLOPs, as MFU is
usually reported). Non-goal: measuring anything (see `benchmarks/`).
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


def block_matmul_params(cfg: ModelConfig) -> int:
    """The weights of one block's matmuls: the q/k/v and output projections and the gated MLP."""
    d, hd, h, kv = cfg.n_embd, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    attention = d * (h + 2 * kv) * hd + h * hd * d
    mlp = d * 2 * cfg.intermediate_size + cfg.intermediate_size * d
    return attention + mlp


def block_params(cfg: ModelConfig) -> int:
    """All parameters of one block: its matmuls, the qk bias and QK-norm, and the block norms."""
    hd, h, kv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    qk_bias = 2 * h * hd if cfg.qk_bias else 0
    qk_norm = (h + kv) * hd if cfg.qk_norm else 0
    norms = (4 if cfg.block_type == "sandwich" else 2) * cfg.n_embd
    return block_matmul_params(cfg) + qk_bias + qk_norm + norms


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
    adapter = param_counts(cfg).adapter
    n_blocks = cfg.n_layers_in_prelude + cfg.n_layers_in_coda + num_steps * cfg.n_layers_in_recurrent_block
    head = cfg.padded_vocab_size * cfg.n_embd  # a tied head is still a matmul
    matmul = n_blocks * block_matmul_params(cfg) + num_steps * adapter + head
    attention = 4 * n_blocks * context * cfg.n_heads * cfg.head_dim
    return 2 * matmul + attention


def train_flops_per_token(cfg: ModelConfig, no_grad_steps: int, grad_steps: int, context: int = 0) -> int:
    """FLOPs of one training token: forward through all steps, backward through the grad steps."""
    return flops_per_token(cfg, no_grad_steps + grad_steps, context) + 2 * flops_per_token(cfg, grad_steps, context)
