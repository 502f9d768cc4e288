"""The recurrent-depth language model: prelude, core iterated `num_steps` times, coda.

    e      = prelude(wte(tokens) * embed_scale)
    s_0    = init_state(e)                        # truncated normal * init_scale, or given
    s_i    = core(inject(s_{i-1}, e))             # i = 1 .. num_steps
    logits = head(ln_f(coda(ln_f(s_r))))          # the same ln_f twice, as published
                                                  # (coda_input_norm=False: head(ln_f(coda(s_r))), retrofits)

`num_steps` is an int (every step differentiable) or a pair (no_grad_steps, grad_steps) for
truncated backprop; `normalize_steps` reads every accepted spelling (forward and generate use it). The model never decides its own depth: callers pass it (training samples it
in `huginn.train.steps`). The step-level pieces (`embed`, `initialize_state`, `core_step`,
`predict`) are public so that inference can exit per token and analysis can look at every state.
Non-goals: generation loops and cache policies (`huginn.infer`), the transformers API (`huginn.hf`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from huginn.config import ModelConfig
from huginn.errors import HuginnError
from huginn.model.init import init_weights
from huginn.model.layers import (
    BLOCKS,
    AttentionContext,
    BlockRunner,
    KVCache,
    RMSNorm,
    causal_mask,
    rope_table,
    run_blocks,
)
from huginn.model.products import Linear
from huginn.model.recurrence import Recurrence, Schedule, StepHook, recur
from huginn.model.slots import SlotLayout

Steps = int | Tensor | tuple[int | Tensor, int | Tensor] | list[int | Tensor]

STEPS_HINT = (
    "pass an int, a 0-dim integer tensor, or a pair (no_grad_steps, grad_steps) of those as a tuple, "
    "e.g. num_steps=8 or num_steps=(torch.tensor(6), torch.tensor(2))"
)


@dataclass
class RecurrentOutput:
    logits: Tensor  # (B, S, padded_vocab) fp32
    state: Tensor  # (B, S, d) final state, before ln_f: feed it back as `input_states` to continue
    latents: Tensor  # (B, S, d) ln_f(final state): the published `latent_states`
    states: list[Tensor] | None = None  # the state after every step, when asked for


def _step_count(value: object, what: str) -> int:
    """One count of `num_steps`: a Python/NumPy integer or an integer tensor of one element."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise HuginnError(f"{what} must be an integer, got a {value.dtype} tensor; {STEPS_HINT}")
        if value.dim() == 1 and value.numel() == 2:
            raise HuginnError(
                f"{what} is a 1-D tensor of 2 elements, which is not read as a pair; pass a tuple "
                "(no_grad_steps, grad_steps), e.g. (torch.tensor(6), torch.tensor(2))"
            )
        if value.dim() > 1 or value.numel() != 1:
            raise HuginnError(
                f"{what} must be a single count, got a tensor of shape {tuple(value.shape)}; {STEPS_HINT}"
            )
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise HuginnError(f"{what} must be an integer, got {value!r}; {STEPS_HINT}")
    return int(value)


def normalize_steps(num_steps: Steps | None, default: int) -> tuple[int, int]:
    """(no_grad_steps, grad_steps) of any accepted `num_steps`, rejecting the rest with one line.

    Accepted: an int (>= 1), a 0-dim (or one-element) integer tensor, or a tuple/list of two such
    counts (each >= 0, at least 1 in total), as the reference's training code passes them. A 1-D
    tensor of two elements is refused, not read as a pair (pass a tuple). None: `default` steps."""
    if num_steps is None:
        num_steps = default
    if isinstance(num_steps, (tuple, list)):
        if len(num_steps) != 2:
            raise HuginnError(f"num_steps pair must have 2 entries, got {len(num_steps)}; {STEPS_HINT}")
        n = _step_count(num_steps[0], "num_steps[0] (no_grad_steps)")
        k = _step_count(num_steps[1], "num_steps[1] (grad_steps)")
        if n < 0 or k < 0 or n + k < 1:
            raise HuginnError(f"num_steps pair ({n}, {k}) must be non-negative with at least 1 step in total")
        return n, k
    steps = _step_count(num_steps, "num_steps")
    if steps < 1:
        raise HuginnError(f"num_steps must be an integer >= 1, got {steps}")
    return 0, steps


split_steps = normalize_steps  # the earlier name


def check_init_scale(init_scale: object) -> None:
    """`init_scale` is None (the model's default) or a finite number >= 0."""
    if init_scale is None:
        return
    if isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real) or not math.isfinite(init_scale):
        raise HuginnError(f"init_scale must be a number >= 0 (0: a zero initial state), got {init_scale!r}")
    if init_scale < 0:
        raise HuginnError(f"init_scale must be >= 0 (0: a zero initial state), got {init_scale!r}")


def check_token_inputs(input_ids: object, attention_mask: object, vocab_size: int) -> None:
    """One-line errors for malformed `input_ids` (B, S) and `attention_mask` (B, S_kv) of 0/1.

    Shapes and dtypes cost nothing; the value checks (ids in [0, vocab_size), mask in {0, 1}) read
    one small tensor back from the device, and are skipped while torch.compile traces."""
    if not isinstance(input_ids, Tensor):
        raise HuginnError(f"input_ids must be a (batch, seq) tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise HuginnError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; pass ids.long()")
    if input_ids.dim() != 2:
        raise HuginnError(
            f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}; add a batch dimension with ids[None]"
        )
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise HuginnError(
                f"attention_mask must be a (batch, seq) tensor of 0/1, got {type(attention_mask).__name__}"
            )
        if attention_mask.dim() != 2 or attention_mask.shape[0] != input_ids.shape[0]:
            raise HuginnError(
                f"attention_mask must be 2-D (batch, seq) with batch {input_ids.shape[0]}, got shape "
                f"{tuple(attention_mask.shape)}; pass the tokenizer's mask of 1 (token) and 0 (padding)"
            )
    if torch.compiler.is_compiling() or input_ids.numel() == 0:
        return
    flags = [((input_ids < 0) | (input_ids >= vocab_size)).any()]
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        flags.append(((attention_mask != 0) & (attention_mask != 1)).any().to(input_ids.device))
    bad = torch.stack(flags).tolist()  # one read back for all the value checks
    if bad[0]:
        lo, hi = int(input_ids.min()), int(input_ids.max())
        raise HuginnError(
            f"input_ids must lie in [0, {vocab_size}) (the model's vocab_size), got values in [{lo}, {hi}]; "
            "use the model's own tokenizer"
        )
    if len(bad) > 1 and bad[1]:
        raise HuginnError("attention_mask must hold only 0 (padding) and 1 (token); pass the tokenizer's mask")


def check_forward_kwargs(unknown: dict[str, Any], valid: list[str]) -> None:
    """Refuse misspelled keyword arguments (`num_step=`, `init_scal=`), naming the closest valid one."""
    if not unknown:
        return
    import difflib

    name = sorted(unknown)[0]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(valid))}"
    raise HuginnError(f"forward got an unexpected keyword argument {name!r}; {hint}")


FORWARD_KWARGS = [
    "input_ids",
    "num_steps",
    "input_states",
    "init_scale",
    "generator",
    "attention_mask",
    "position_ids",
    "cache",
    "return_states",
    "checkpoint_core",
]


class Transformer(nn.ModuleDict):
    """The named parts of the model (a ModuleDict; the annotations only type the attributes)."""

    wte: nn.Embedding
    prelude: nn.ModuleList
    adapter: nn.Linear  # only with injection_type "linear"
    core_block: nn.ModuleList
    coda: nn.ModuleList
    ln_f: RMSNorm


class RecurrentLM(nn.Module):
    """The one implementation of the model. `huginn.hf.RavenForCausalLM` is this class plus the
    transformers API; parameter names are those of the published checkpoint format."""

    model_config: ModelConfig
    slots: SlotLayout
    transformer: Transformer
    lm_head: nn.Linear
    freqs_cis: Tensor

    def __init__(self, config: ModelConfig | None = None):
        # None only inside transformers' cooperative __init__ chain, which calls the next class's
        # __init__ without arguments; `RavenForCausalLM` then calls `build` with its config's shape
        super().__init__()
        if config is not None:
            self.build(config)
            init_weights(self)

    def build(self, cfg: ModelConfig) -> None:
        self.model_config = cfg
        self.slots = SlotLayout.of(cfg)  # which KV-cache slot each block call writes
        block = BLOCKS[cfg.block_type]
        d = cfg.n_embd
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(cfg.padded_vocab_size, d),
            "prelude": nn.ModuleList(block(cfg) for _ in range(cfg.n_layers_in_prelude)),
        }
        if cfg.injection_type == "linear":
            modules["adapter"] = Linear(2 * d, d, bias=False)  # input columns [state | e]
        modules["core_block"] = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers_in_recurrent_block))
        modules["coda"] = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers_in_coda))
        modules["ln_f"] = RMSNorm(d, cfg.norm_eps)
        self.transformer = Transformer(modules)
        self.lm_head = Linear(d, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        # persistent, as published: the checkpoint carries the table and we use it as stored
        self.register_buffer("freqs_cis", rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base, cfg.rope_scaling))

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

    def embed(self, input_ids: Tensor, ctx: AttentionContext, run: BlockRunner = run_blocks) -> Tensor:
        """Token embedding (scaled) followed by the prelude: the injected `e`. `run` runs each group
        of blocks (here and in `core_step`, `recur`, `readout`, `predict`): compiled decoding passes
        its own."""
        x = self.transformer.wte(input_ids)
        if self.model_config.embed_scale != 1:
            x = x * self.model_config.embed_scale
        return run(self.transformer.prelude, x, ctx, self.slots.prelude())

    def initialize_state(
        self, e: Tensor, init_scale: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Truncated-normal (+-3 sigma) noise with sigma = std * init_scale, times the embedding scale,
        shaped like `e` (only its shape, dtype and device are read)."""
        cfg = self.model_config
        scale = cfg.state_init_scale if init_scale is None else init_scale
        std = cfg.init_std * scale
        if std == 0:
            return torch.zeros_like(e)
        x = torch.empty(e.shape, dtype=torch.float32, device=e.device)
        nn.init.trunc_normal_(x, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)
        if cfg.embed_scale != 1:
            x = x * cfg.embed_scale
        return x.to(e.dtype)

    def start_state(
        self,
        e: Tensor,
        input_states: Tensor | None = None,
        init_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The recurrence's first state: `input_states` (checked against `e`'s shape) or fresh noise."""
        if input_states is None:
            return self.initialize_state(e, init_scale, generator)
        if input_states.shape != e.shape:
            raise HuginnError(f"input_states has shape {tuple(input_states.shape)}, expected {tuple(e.shape)}")
        return input_states.to(e.dtype)

    def core_step(
        self, state: Tensor, e: Tensor, ctx: AttentionContext, step: int, run: BlockRunner = run_blocks
    ) -> Tensor:
        """One iteration of the core: inject e into the state, run the core layers."""
        if self.model_config.injection_type == "linear":
            x = self.transformer.adapter(torch.cat([state, e], dim=-1))
        else:
            x = state + e
        return run(self.transformer.core_block, x, ctx, self.slots.core(step))

    def recur(
        self,
        state: Tensor,
        e: Tensor,
        ctx: AttentionContext,
        schedule: Schedule,
        *,
        hook: StepHook | None = None,
        limit: Tensor | None = None,
        run: BlockRunner = run_blocks,
    ) -> Recurrence:
        """The core iterated from `state` with `e` injected at every step: `huginn.model.recurrence.recur`
        over `core_step` (the one loop every caller uses; see that module for schedule, hook, limit)."""
        return recur(lambda s, step: self.core_step(s, e, ctx, step, run), state, schedule, hook=hook, limit=limit)

    def readout(self, state: Tensor, ctx: AttentionContext, run: BlockRunner = run_blocks) -> tuple[Tensor, Tensor]:
        """(hidden, latents): the coda's normalised output, which the head reads, and ln_f(state).
        The coda reads ln_f(state), or the raw state for a retrofitted base (which normalises only
        once, after its last layer). Training calls this too, so both compute the same function."""
        latents = self.transformer.ln_f(state)
        x = latents if self.model_config.coda_input_norm else state
        x = run(self.transformer.coda, x, ctx, self.slots.coda())
        return self.transformer.ln_f(x), latents

    def predict(
        self, state: Tensor, ctx: AttentionContext, last_only: bool = False, run: BlockRunner = run_blocks
    ) -> tuple[Tensor, Tensor]:
        """(logits, latents) from a state: `readout`, then the head. With `last_only` the head
        reads only the last position (decoding): logits (B, V), latents (B, 1, d); the coda still
        runs over every position, so that its KV entries exist for later tokens. Logits are fp32
        (fp64 stays fp64: exactness checks compare in double precision)."""
        hidden, latents = self.readout(state, ctx, run)
        if last_only:
            hidden, latents = hidden[:, -1], latents[:, -1:]
        logits = self.lm_head(hidden)
        return (logits if logits.dtype == torch.float64 else logits.float()), latents

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
        checkpoint_core: bool = False,
        **unknown: Any,
    ) -> RecurrentOutput:
        """The whole model: embed, `num_steps` core steps from the initial state, readout and head.
        `checkpoint_core` recomputes each gradient step's activations in the backward (training)."""
        check_forward_kwargs(unknown, FORWARD_KWARGS)
        n_no_grad, n_grad = normalize_steps(num_steps, self.model_config.mean_recurrence)
        check_init_scale(init_scale)
        check_token_inputs(input_ids, attention_mask, self.model_config.vocab_size)
        B, S = input_ids.shape
        ctx = self.context(B, S, attention_mask, position_ids, cache)
        e = self.embed(input_ids, ctx)
        state = self.start_state(e, input_states, init_scale, generator)
        states: list[Tensor] = []

        def record(step: int, new: Tensor, previous: Tensor) -> None:
            states.append(new)

        state = self.recur(
            state, e, ctx, Schedule(n_no_grad, n_grad, checkpoint_core), hook=record if return_states else None
        ).state
        logits, latents = self.predict(state, ctx)
        return RecurrentOutput(logits=logits, state=state, latents=latents, states=states if return_states else None)
