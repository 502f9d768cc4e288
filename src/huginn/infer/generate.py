"""Generation for recurrent-depth models as small functions: `run_tokens` (one forward through the
recurrence, with optional per-row early exit), `prefill`, `decode_one_token` and the `generate` loop.

Depth per token is a `Depth`: a fixed `num_steps`, or at most `num_steps` with an exit criterion
(`huginn.infer.exits`) checked after every `check_every`-th step once `min_steps` unchecked steps
have run (the published semantics: with min_steps=0 the first check follows step 1). The prefill
counts as one token: the whole prompt iterates together and exits together (latent criteria
average over its real positions, logit criteria look at its last position). In a batch each row
exits on its own: its state freezes, the cache stops taking its writes (`active_rows`), and it ends
up with exactly the tokens, step counts and KV entries it gets alone. With `continuous=True` each
token's recurrence starts from the previous token's final latent (ln_f of its state), as the
published `continuous_compute`.

Stopping: `max_new_tokens`, eos ids, and stop strings (with a tokenizer). Finished rows receive
`pad_token_id`. Left-padded batches need `attention_mask`; positions then count from each row's
first real token. Non-goals: beam search, transformers' logits processors, speculative decoding
(`huginn.infer.speculative`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.infer.compiled import CompiledRunner, can_compile, decode_layout, decode_token, frozen_graph
from huginn.infer.exits import ExitCriterion
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.sampling import Sampling, next_token
from huginn.model.layers import AttentionContext
from huginn.model.recurrent import check_init_scale, check_token_inputs


@dataclass
class Depth:
    """How deep each token goes."""

    num_steps: int
    criterion: ExitCriterion | None = None
    min_steps: int = 0  # steps run before the first check
    check_every: int = 1
    continuous: bool = False
    init_scale: float | None = None  # None: the model's default; 0: a zero initial state

    def __post_init__(self) -> None:
        for name in ("num_steps", "check_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HuginnError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 0:
            raise HuginnError(f"min_steps must be an integer >= 0, got {self.min_steps!r}")
        check_init_scale(self.init_scale)


@dataclass
class Stopping:
    max_new_tokens: int
    eos_ids: tuple[int, ...] = ()
    stop_strings: Callable[..., Tensor] | None = None  # a transformers StopStringCriteria (needs a tokenizer)
    pad_token_id: int = 0


@dataclass
class TokenResult:
    logits: Tensor  # (B, V) fp32, last position ((B, S, V) with all_logits)
    latents: Tensor  # (B, 1, d) ln_f of the last position's final state
    steps: Tensor  # (B,) long: core steps computed


@dataclass
class Generation:
    sequences: Tensor  # (B, prompt + new)
    compute_steps: (
        Tensor  # (B, new) core steps spent on each new token (the first is the prefill's); 0 after a row stopped
    )
    cache: HuginnStaticCache
    extras: dict = field(default_factory=dict)


def predict_last(model, state: Tensor, ctx: AttentionContext, all_positions: bool = False) -> tuple[Tensor, Tensor]:
    """(logits (B, V), latents (B, 1, d)) of the last position (or (B, S, V) logits of every
    position); the coda runs over every new position so that its KV entries exist for later tokens."""
    logits, latents = model.predict(state, ctx, last_only=not all_positions)
    return logits, latents[:, -1:]


def run_tokens(
    model,
    ids: Tensor,
    cache: HuginnStaticCache,
    depth: Depth,
    attention_mask: Tensor | None = None,
    input_states: Tensor | None = None,
    active: Tensor | None = None,
    generator: torch.Generator | None = None,
    all_logits: bool = False,
    compiled: bool = False,
    graph=None,
) -> TokenResult:
    """One forward of `ids` (B, S) through prelude, recurrence (fixed or adaptive) and coda, with the cache.
    `attention_mask` (B, past + S) is needed only when some rows are padded; `active` (B,) marks rows
    still generating (the others are frozen from the start). `compiled`: run a single-token forward
    through `huginn.infer.compiled` where it can (no frozen rows, no `skip` lookup): at fixed depth
    the whole token is one graph (its initial state is drawn first, from the same generator), or
    `graph` (a `FrozenGraph`) where given."""
    B, S = ids.shape
    crit, n = depth.criterion, depth.num_steps
    ctx = model.context(B, S, attention_mask, None, cache)
    if compiled and can_compile(cache, S, freezes_rows=active is not None or (crit is not None and B > 1)):
        if crit is None and not all_logits:  # the whole token is one graph
            dtype = model.transformer.wte.weight.dtype
            if (
                input_states is None
            ):  # drawn before the graph, as eager draws it (after the prelude, which draws nothing)
                like = torch.empty(B, S, model.model_config.n_embd, dtype=dtype, device=ids.device)
                state = model.initialize_state(like, depth.init_scale, generator)
            else:
                state = input_states.to(dtype)
            logits, latents = decode_token(model, ids, cache, n, ctx.rope, state, attention_mask, graph)
            return TokenResult(logits, latents, torch.full((B,), n, dtype=torch.long, device=ids.device))
        ctx = replace(ctx, runner=CompiledRunner(cache, attention_mask))
    e = model.embed(ids, ctx)
    state = model.initialize_state(e, depth.init_scale, generator) if input_states is None else input_states.to(e.dtype)
    if crit is None or all_logits:  # (speculative verification runs at fixed depth)
        for step in range(n):
            state = model.core_step(state, e, ctx, step)
        logits, latents = predict_last(model, state, ctx, all_logits)
        return TokenResult(logits, latents, torch.full((B,), n, dtype=torch.long, device=ids.device))

    seq_mask = attention_mask[:, -S:].bool() if attention_mask is not None and S > 1 else None
    batched = B > 1
    running = torch.ones(B, dtype=torch.bool, device=ids.device) if active is None else active.clone()
    steps = torch.full((B,), n, dtype=torch.long, device=ids.device)
    out_logits = torch.zeros(B, model.lm_head.out_features, device=ids.device)
    out_latents = torch.zeros(B, 1, e.shape[-1], dtype=e.dtype, device=ids.device)
    have = ~running  # rows whose output is settled (frozen rows keep zeros; they are never used)
    if batched:
        cache.active_rows = running.clone()
    crit.reset(state, seq_mask)
    try:
        for step in range(n):
            new = model.core_step(state, e, ctx, step)
            state = torch.where(running[:, None, None], new, state) if batched else new
            if step < depth.min_steps or (step - depth.min_steps) % depth.check_every:
                continue
            step_logits: Tensor | None = None
            step_latents: Tensor | None = None
            if crit.uses_logits:
                step_logits, step_latents = predict_last(model, state, ctx)
            exits = crit.check(state, step_logits, seq_mask) & running
            if bool(exits.any()):
                steps = torch.where(exits, step + 1, steps)
                if step_logits is not None and step_latents is not None:
                    out_logits[exits], out_latents[exits] = step_logits[exits], step_latents[exits]
                    have = have | exits
                running = running & ~exits
                if not bool(running.any()):
                    break
                if batched:
                    cache.active_rows = running.clone()
        need = ~have
        if bool(need.any()):
            if batched:
                cache.active_rows = need
            logits, latents = predict_last(model, state, ctx)
            out_logits[need], out_latents[need] = logits[need], latents[need]
    finally:
        cache.active_rows = None
    cache.finish()
    return TokenResult(out_logits, out_latents, steps)


@torch.no_grad()  # decoding never needs gradients (and huginn's decoding kernel has none)
def generate(
    model,
    input_ids: Tensor,
    depth: Depth,
    stopping: Stopping,
    sampling: Sampling = Sampling(),
    attention_mask: Tensor | None = None,
    policy: CachePolicy | None = None,
    cache: HuginnStaticCache | None = None,
    streamer=None,
    generator: torch.Generator | None = None,
    compile: bool | str = False,
) -> Generation:
    """Autoregressive generation: prefill, then one token at a time until every row stops.
    `compile=True` decodes through compiled graphs (`huginn.infer.compiled`): one per token at fixed
    depth; `compile="frozen"` compiles the model's weights into the fixed-depth graph as constants
    (`FrozenGraph`: fastest for bf16 on CPUs with AMX; rebuilt when the weights change)."""
    if compile not in (False, True, "frozen"):
        raise HuginnError(f"compile={compile!r} is not a decoding mode; use False, True or 'frozen'")
    check_token_inputs(input_ids, attention_mask, model.model_config.vocab_size)  # the prompt, once
    B, T = input_ids.shape
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise HuginnError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}; "
            "pass the tokenizer's mask for the same prompts"
        )
    check_length(model, T, stopping.max_new_tokens)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the unmasked fast path
    if cache is None:
        cache = HuginnStaticCache.for_model(model, B, depth.num_steps, T + stopping.max_new_tokens, policy)
    seqs = input_ids
    mask = attention_mask
    if streamer is not None:
        streamer.put(input_ids.cpu())
    res = run_tokens(model, input_ids, cache, depth, mask, None, None, generator)
    graph = frozen_graph(model) if compile == "frozen" else None
    # a frozen graph holds its own packed weights, so the column-major layout is for `compile=True` only
    with decode_layout(model) if compile is True else nullcontext():
        seqs, all_steps = _decode(
            model, res, seqs, mask, cache, depth, stopping, sampling, streamer, generator, bool(compile), graph
        )
    if streamer is not None:
        streamer.end()
    cache.finish()
    return Generation(seqs, torch.stack(all_steps, dim=1), cache)


def _decode(
    model,
    res: TokenResult,
    seqs: Tensor,
    mask: Tensor | None,
    cache: HuginnStaticCache,
    depth: Depth,
    stopping: Stopping,
    sampling: Sampling,
    streamer,
    generator,
    compile: bool,
    graph=None,
) -> tuple[Tensor, list[Tensor]]:
    """The token-by-token loop of `generate` from the prefill's result: (sequences, steps per token)."""
    B = seqs.shape[0]
    unfinished = torch.ones(B, dtype=torch.bool, device=seqs.device)
    all_steps: list[Tensor] = []
    for i in range(stopping.max_new_tokens):
        all_steps.append(torch.where(unfinished, res.steps, 0))
        tok = next_token(res.logits, seqs, sampling, generator, mask.bool() if mask is not None else None)
        tok = torch.where(unfinished, tok, stopping.pad_token_id)
        seqs = torch.cat([seqs, tok[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if streamer is not None:
            streamer.put(tok.cpu())
        unfinished = unfinished & ~is_stop(tok, seqs, stopping)
        if i == stopping.max_new_tokens - 1 or not bool(unfinished.any()):
            break
        states = res.latents if depth.continuous else None
        res = run_tokens(
            model,
            tok[:, None],
            cache,
            depth,
            mask,
            states,
            unfinished if depth.criterion and B > 1 else None,
            generator,
            compiled=compile,
            graph=graph,
        )
    return seqs, all_steps


def is_stop(tok: Tensor, seqs: Tensor, stopping: Stopping) -> Tensor:
    stop = torch.zeros_like(tok, dtype=torch.bool)
    for eos in stopping.eos_ids:
        stop |= tok == eos
    if stopping.stop_strings is not None:
        stop |= stopping.stop_strings(seqs, None).to(stop.device)
    return stop


def check_length(model, prompt_len: int, max_new_tokens: int) -> None:
    block = model.model_config.block_size
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise HuginnError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if prompt_len > block:
        raise HuginnError(f"prompt of {prompt_len} tokens is longer than the block size {block}; shorten the prompt")
    if prompt_len + max_new_tokens > block:
        raise HuginnError(
            f"prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} exceeds the block size {block}; "
            f"ask for at most {block - prompt_len} new tokens"
        )
    if prompt_len < 1:
        raise HuginnError("the prompt is empty; pass at least one token")
