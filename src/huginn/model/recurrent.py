"""The recurrent-depth language model: prelude, core iterated `num_steps` times, coda.

    e      = prelude(wte(tokens) * embed_scale)
    s_0    = init_state(e)                        # truncated normal * init_scale, or given
    s_i    = core(inject(s_{i-1}, e))             # i = 1 .. num_steps
    logits = head(ln_f(coda(ln_f(s_r))))          # the same ln_f twice, as published
                                                  # (coda_input_norm=False: head(ln_f(coda(s_r))), retrofits)

`num_steps` is an int (every step differentiable) or a pair (no_grad_steps, grad_steps) for
truncated backprop. The model never decides its own depth: callers pass it (training samples it
in `huginn.train.steps`). The step-level pieces (`embed`, `initialize_state`, `core_step`,
`predict`) are public so that inference can exit per token and analysis can look at every state.
Non-goals: generation loops and cache policies (`huginn.infer`), the transformers API (`huginn.hf`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from huginn.config import ModelConfig
from huginn.errors import HuginnError
from huginn.model.init import init_weights
from huginn.model.layers import BLOCKS, AttentionContext, KVCache, RMSNorm, causal_mask, rope_table, run_blocks

Steps = int | tuple[int, int] | list[int]


@dataclass
class RecurrentOutput:
    logits: Tensor  # (B, S, padded_vocab) fp32
    state: Tensor  # (B, S, d) final state, before ln_f: feed it back as `input_states` to continue
    latents: Tensor  # (B, S, d) ln_f(final state): the published `latent_states`
    states: list[Tensor] | None = None  # the state after every step, when asked for


def split_steps(num_steps: Steps | None, default: int) -> tuple[int, int]:
    """Normalise `num_steps` to (no_grad_steps, grad_steps), rejecting bad values with one line."""
    if num_steps is None:
        num_steps = default
    if isinstance(num_steps, Tensor):
        num_steps = num_steps.tolist()
    if isinstance(num_steps, (tuple, list)):
        if len(num_steps) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in num_steps):
            raise HuginnError(f"num_steps must be an int or a pair (no_grad_steps, grad_steps), got {num_steps!r}")
        n, k = num_steps
        if n < 0 or k < 0 or n + k < 1:
            raise HuginnError(f"num_steps pair {tuple(num_steps)} must be non-negative with at least 1 step in total")
        return n, k
    if not isinstance(num_steps, int) or isinstance(num_steps, bool):
        raise HuginnError(f"num_steps must be an int or a pair (no_grad_steps, grad_steps), got {num_steps!r}")
    if num_steps < 1:
        raise HuginnError(f"num_steps must be >= 1, got {num_steps}")
    return 0, num_steps


class RecurrentLM(nn.Module):
    """The one implementation of the model. `huginn.hf.RavenForCausalLM` is this class plus the
    transformers API; parameter names are those of the published checkpoint format."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        if config is not None:
            self.build(config)
            init_weights(self)

    def build(self, cfg: ModelConfig) -> None:
        self.model_config = cfg
        self.checkpoint_core = False  # per-iteration activation checkpointing of grad steps (training)
        block = BLOCKS[cfg.block_type]
        d = cfg.n_embd
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(cfg.padded_vocab_size, d),
            "prelude": nn.ModuleList(block(cfg) for _ in range(cfg.n_layers_in_prelude)),
        }
        if cfg.injection_type == "linear":
            modules["adapter"] = nn.Linear(2 * d, d, bias=False)  # input columns [state | e]
        modules["core_block"] = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers_in_recurrent_block))
        modules["coda"] = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers_in_coda))
        modules["ln_f"] = RMSNorm(d, cfg.norm_eps)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(d, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        # persistent, as published: the checkpoint carries the table and we use it as stored
        self.register_buffer("freqs_cis", rope_table(cfg.dim_head, cfg.block_size, cfg.rope_base, cfg.rope_scaling))

    # --- step-level pieces --------------------------------------------------------------------
    def context(
        self,
        batch: int,
        seq_len: int,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> AttentionContext:
        """Positions, RoPE rows and the attention mask for one forward over `seq_len` new tokens."""
        device = self.freqs_cis.device
        past = cache.get_seq_length() if cache is not None else 0
        kv_len = past + seq_len
        block_size = self.freqs_cis.shape[1]
        if attention_mask is not None and attention_mask.shape[-1] != kv_len:
            raise HuginnError(
                f"attention_mask has {attention_mask.shape[-1]} columns but the cache holds {past} tokens and "
                f"{seq_len} are new; pass a mask over all {kv_len} tokens"
            )
        if position_ids is None:
            if kv_len > block_size:
                raise HuginnError(
                    f"sequence of {kv_len} tokens is longer than the block size {block_size}; shorten the prompt"
                )
            if attention_mask is not None:
                # left padding: every row's first real token gets position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
            else:
                position_ids = torch.arange(past, kv_len, device=device)[None]
        rope = self.freqs_cis[0][position_ids.to(device)]  # (B|1, S, 1, hd/2, 2)
        if attention_mask is None or bool(attention_mask.all()):
            if seq_len == kv_len:
                return AttentionContext(rope, None, True, cache)
            if seq_len == 1:
                return AttentionContext(rope, None, False, cache)
            return AttentionContext(rope, causal_mask(seq_len, kv_len, device)[None, None], False, cache)
        keep = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        mask = causal_mask(seq_len, kv_len, device)[None, None] & keep
        # padded queries see themselves, so no row of the softmax is empty (their outputs are never used)
        own = torch.arange(kv_len, device=device)[None, :] == (torch.arange(seq_len, device=device)[:, None] + past)
        return AttentionContext(rope, mask | own[None, None], False, cache)

    def embed(self, input_ids: Tensor, ctx: AttentionContext) -> Tensor:
        """Token embedding (scaled) followed by the prelude: the injected `e`."""
        x = self.transformer.wte(input_ids)
        if self.model_config.emb_scale != 1:
            x = x * self.model_config.emb_scale
        return run_blocks(self.transformer.prelude, x, ctx, list(range(len(self.transformer.prelude))))

    def initialize_state(
        self, e: Tensor, init_scale: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Truncated-normal (+-3 sigma) noise with sigma = std * init_scale, times the embedding scale,
        shaped like `e` (only its shape, dtype and device are read)."""
        cfg = self.model_config
        scale = cfg.state_init_scale if init_scale is None else init_scale
        std = cfg.std * scale
        if std == 0:
            return torch.zeros_like(e)
        x = torch.empty(e.shape, dtype=torch.float32, device=e.device)
        nn.init.trunc_normal_(x, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)
        if cfg.emb_scale != 1:
            x = x * cfg.emb_scale
        return x.to(e.dtype)

    def core_step(self, state: Tensor, e: Tensor, ctx: AttentionContext, step: int) -> Tensor:
        """One iteration of the core: inject e into the state, run the core layers."""
        if self.model_config.injection_type == "linear":
            x = self.transformer.adapter(torch.cat([state, e], dim=-1))
        else:
            x = state + e
        R = self.model_config.n_layers_in_recurrent_block
        first = self.model_config.n_layers_in_prelude + step * R
        return run_blocks(self.transformer.core_block, x, ctx, list(range(first, first + R)))

    def readout(self, state: Tensor, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """(hidden, latents): the coda's normalised output, which the head reads, and ln_f(state).
        The coda reads ln_f(state), or the raw state for a retrofitted base (which normalises only
        once, after its last layer). Training calls this too, so both compute the same function."""
        latents = self.transformer.ln_f(state)
        x = latents if self.model_config.coda_input_norm else state
        x = run_blocks(self.transformer.coda, x, ctx, [-(i + 1) for i in range(len(self.transformer.coda))])
        return self.transformer.ln_f(x), latents

    def predict(self, state: Tensor, ctx: AttentionContext, last_only: bool = False) -> tuple[Tensor, Tensor]:
        """(logits, latents) from a state: `readout`, then the head. With `last_only` the head
        reads only the last position (decoding): logits (B, V), latents (B, 1, d); the coda still
        runs over every position, so that its KV entries exist for later tokens."""
        hidden, latents = self.readout(state, ctx)
        if last_only:
            hidden, latents = hidden[:, -1], latents[:, -1:]
        return self.lm_head(hidden).float(), latents

    # --- the whole model ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        num_steps: Steps | None = None,
        *,
        input_states: Tensor | None = None,
        init_scale: float | None = None,
        generator: torch.Generator | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        return_states: bool = False,
    ) -> RecurrentOutput:
        n_no_grad, n_grad = split_steps(num_steps, self.model_config.mean_recurrence)
        B, S = input_ids.shape
        ctx = self.context(B, S, attention_mask, position_ids, cache)
        e = self.embed(input_ids, ctx)
        if input_states is None:
            state = self.initialize_state(e, init_scale, generator)
        else:
            if input_states.shape != e.shape:
                raise HuginnError(f"input_states has shape {tuple(input_states.shape)}, expected {tuple(e.shape)}")
            state = input_states.to(e.dtype)
        states: list[Tensor] | None = [] if return_states else None
        with torch.no_grad():
            for step in range(n_no_grad):
                state = self.core_step(state, e, ctx, step)
                if states is not None:
                    states.append(state)
        for step in range(n_no_grad, n_no_grad + n_grad):
            if self.checkpoint_core and torch.is_grad_enabled():
                state = checkpoint(self.core_step, state, e, ctx, step, use_reentrant=False)
            else:
                state = self.core_step(state, e, ctx, step)
            if states is not None:
                states.append(state)
        logits, latents = self.predict(state, ctx)
        return RecurrentOutput(logits=logits, state=state, latents=latents, states=states)
