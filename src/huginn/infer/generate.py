"""Generation for recurrent-depth models as small functions, in gpt-fast's shape:

    start -> prefill -> (next_token -> Output.push -> decode_one_token)* -> Output.result

`start` checks the prompt and sizes the cache, `prefill` runs the whole prompt as one token,
`decode_one_token` one new token, `Output.push` is the stop step (padding finished rows, streaming,
eos and stop strings). Self-speculative decoding (`huginn.infer.speculative`) shares all but the
middle. Every forward is `run_tokens`: prelude, the recurrence (`model.recur`, the one loop)
and coda, with the cache.

Depth per token is a `Depth`: a fixed `num_steps`, or at most `num_steps` with an exit criterion
(`huginn.infer.exits`) checked after every `check_every`-th step once `min_steps` unchecked steps
have run (the published semantics: with min_steps=0 the first check follows step 1). The exits are
the recurrence's hook (`ExitHook`). The prefill counts as one token: the whole prompt iterates
together and exits together (latent criteria average over its real positions, logit criteria look
at its last position), unless `exit_in_prefill=False` (the published `do_not_exit_in_prefill`):
then the prompt runs all `num_steps`. In a batch each row exits on its own: its state freezes, the
cache stops taking its writes (`active_rows`), and it ends up with exactly the tokens, step counts
and KV entries it gets alone. With `continuous=True` each token's recurrence starts from the
previous token's final latent (ln_f of its state), as the published `continuous_compute`.
`init_scale=None` (the default everywhere) is the model's `state_init_scale` (1.0, as published).

Stopping: `max_new_tokens`, eos ids, and stop strings (with a tokenizer). Finished rows receive
`pad_token_id`. Left-padded batches need `attention_mask`; positions then count from each row's
first real token. Non-goals: beam search, transformers' logits processors, parsing options
(`huginn.infer.options`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.infer.compiled import (
    CompiledRunner,
    FrozenGraph,
    can_compile,
    decode_layout,
    decode_token,
    frozen_graph,
)
from huginn.infer.exits import ExitCriterion
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.sampling import Sampling, next_token
from huginn.model.layers import AttentionContext, BlockRunner, run_blocks
from huginn.model.recurrence import Schedule, StepHook
from huginn.model.recurrent import check_init_scale, check_token_inputs


@dataclass
class Depth:
    """How deep each token goes."""

    num_steps: int
    criterion: ExitCriterion | None = None
    min_steps: int = 0  # steps run before the first check
    check_every: int = 1
    continuous: bool = False
    init_scale: float | None = None  # None: the model's state_init_scale; 0: a zero initial state
    exit_in_prefill: bool = True  # False: the prompt runs num_steps, exits start with the first new token

    def __post_init__(self) -> None:
        for name in ("num_steps", "check_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HuginnError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 0:
            raise HuginnError(f"min_steps must be an integer >= 0, got {self.min_steps!r}")
        check_init_scale(self.init_scale)

    def due(self, step: int) -> bool:
        """Whether the criterion is checked after `step` (1-based) steps."""
        return step > self.min_steps and (step - 1 - self.min_steps) % self.check_every == 0


@dataclass
class Stopping:
    max_new_tokens: int
    eos_ids: tuple[int, ...] = ()
    stop_strings: Callable[..., Tensor] | None = None  # a transformers StopStringCriteria (needs a tokenizer)
    pad_token_id: int = 0


@dataclass
class TokenResult:
    logits: Tensor  # (B, V) fp32 of the last position
    latents: Tensor  # (B, 1, d) ln_f of the last position's final state
    steps: Tensor  # (B,) long: core steps computed


@dataclass
class Generation:
    sequences: Tensor  # (B, prompt + new)
    compute_steps: Tensor  # (B, new) core steps per new token (the first is the prefill's); 0 once a row stopped
    cache: HuginnStaticCache
    extras: dict = field(default_factory=dict)


# --- one forward ------------------------------------------------------------------------------


def run_tokens(
    model,
    ids: Tensor,
    cache: HuginnStaticCache,
    depth: Depth,
    attention_mask: Tensor | None = None,
    input_states: Tensor | None = None,
    active: Tensor | None = None,
    generator: torch.Generator | None = None,
    compiled: bool | FrozenGraph = False,
    observer: StepHook | None = None,
    run: BlockRunner | None = None,
) -> TokenResult:
    """One forward of `ids` (B, S) through prelude, recurrence (fixed or adaptive) and coda, with the cache.
    `attention_mask` (B, past + S) is needed only when some rows are padded; `active` (B,) marks rows
    still generating (the others are frozen from the start). `compiled`: run a single-token forward
    through `huginn.infer.compiled` where it can (no frozen rows, no `skip` lookup): at fixed depth
    the whole token is one graph (a `FrozenGraph` where given). `observer`: a `recur` hook called
    after every core step, after the exits froze their rows (capture, interventions); it turns
    compilation off, as does `run`, a `BlockRunner` for every group of blocks (capture of the core's
    layer outputs)."""
    B, S = ids.shape
    adaptive = depth.criterion is not None
    ctx = model.context(B, S, attention_mask, None, cache)
    if observer is not None or run is not None:
        compiled = False
    run = run or run_blocks
    if compiled is not False and can_compile(cache, S, freezes_rows=active is not None or (adaptive and B > 1)):
        if not adaptive:  # the whole token is one graph
            graph = compiled if isinstance(compiled, FrozenGraph) else None
            return _compiled_token(model, ids, cache, depth, ctx, attention_mask, input_states, generator, graph)
        run = CompiledRunner(cache, attention_mask)  # each group of blocks is one compiled call
    e = model.embed(ids, ctx, run)
    state = model.initialize_state(e, depth.init_scale, generator) if input_states is None else input_states.to(e.dtype)
    if not adaptive:
        state = model.recur(state, e, ctx, Schedule.plain(depth.num_steps), hook=observer, run=run).state
        logits, latents = model.predict(state, ctx, last_only=True, run=run)
        return TokenResult(logits, latents, _full_steps(B, depth.num_steps, ids.device))
    seq_mask = attention_mask[:, -S:].bool() if attention_mask is not None and S > 1 else None
    running = torch.ones(B, dtype=torch.bool, device=ids.device) if active is None else active.clone()
    hook = ExitHook(model, ctx, cache, depth, running, state, seq_mask, run, observer)
    try:
        state = model.recur(state, e, ctx, Schedule.plain(depth.num_steps), hook=hook, run=run).state
        result = hook.result(state)
    finally:
        cache.set_active_rows(None)
    cache.finish()
    return result


def _full_steps(batch: int, num_steps: int, device: torch.device) -> Tensor:
    return torch.full((batch,), num_steps, dtype=torch.long, device=device)


def _compiled_token(
    model, ids: Tensor, cache, depth: Depth, ctx: AttentionContext, attention_mask, input_states, generator, graph
) -> TokenResult:
    """One token at fixed depth as one compiled graph; its initial state is drawn first, from the
    same generator, as eager draws it (after the prelude, which draws nothing)."""
    B, S = ids.shape
    dtype = model.transformer.wte.weight.dtype
    if input_states is None:
        like = torch.empty(B, S, model.model_config.n_embd, dtype=dtype, device=ids.device)
        state = model.initialize_state(like, depth.init_scale, generator)
    else:
        state = input_states.to(dtype)
    logits, latents = decode_token(model, ids, cache, depth.num_steps, ctx.rope, state, attention_mask, graph)
    return TokenResult(logits, latents, _full_steps(B, depth.num_steps, ids.device))


class ExitHook:
    """The adaptive recurrence's hook (`recur(..., hook=)`): keeps the state of rows that exited
    (and, through the cache's `active_rows`, their KV entries), checks the criterion when it is due,
    keeps an exiting row's logits when the criterion computed them, and stops the recurrence when
    no row runs. Rows frozen from the start (`running` False) keep zero outputs: they are never used."""

    def __init__(
        self,
        model,
        ctx,
        cache,
        depth: Depth,
        running: Tensor,
        state: Tensor,
        seq_mask: Tensor | None,
        run: BlockRunner = run_blocks,
        observer: StepHook | None = None,
    ):
        assert depth.criterion is not None
        self.model, self.ctx, self.cache, self.depth, self.seq_mask = model, ctx, cache, depth, seq_mask
        self.run, self.observer = run, observer
        self.criterion: ExitCriterion = depth.criterion
        B, dev = running.shape[0], running.device
        self.batched, self.running = B > 1, running
        self.steps = _full_steps(B, depth.num_steps, dev)
        self.logits = torch.zeros(B, model.lm_head.out_features, device=dev)
        self.latents = torch.zeros(B, 1, state.shape[-1], dtype=state.dtype, device=dev)
        self.have = ~running  # rows whose outputs are settled
        if self.batched:
            cache.set_active_rows(running.clone())
        self.criterion.reset(state, seq_mask)

    def __call__(self, step: int, state: Tensor, previous: Tensor) -> tuple[Tensor, bool]:
        if self.batched:
            state = torch.where(self.running[:, None, None], state, previous)
        if self.observer is not None:
            action = self.observer(step, state, previous)
            if action is not None:
                state = action[0]
                if action[1]:  # the observer ends the recurrence: every running row stops at this step
                    self.steps = torch.where(self.running, step, self.steps)
                    self.running = torch.zeros_like(self.running)
                    return state, True
        if not self.depth.due(step):
            return state, False
        logits = latents = None
        if self.criterion.uses_logits:
            logits, latents = self.model.predict(state, self.ctx, last_only=True, run=self.run)
        exits = self.criterion.check(state, logits, self.seq_mask) & self.running
        if bool(exits.any()):
            self.steps = torch.where(exits, step, self.steps)
            if logits is not None and latents is not None:
                self.logits[exits], self.latents[exits] = logits[exits], latents[exits]
                self.have = self.have | exits
            self.running = self.running & ~exits
            if not bool(self.running.any()):
                return state, True
            if self.batched:
                self.cache.set_active_rows(self.running.clone())
        return state, False

    def result(self, state: Tensor) -> TokenResult:
        """The outputs, predicting for the rows whose exit (or last step) computed no logits."""
        need = ~self.have
        if bool(need.any()):
            if self.batched:
                self.cache.set_active_rows(need)
            logits, latents = self.model.predict(state, self.ctx, last_only=True, run=self.run)
            self.logits[need], self.latents[need] = logits[need], latents[need]
        return TokenResult(self.logits, self.latents, self.steps)


# --- the generation skeleton --------------------------------------------------------------------


def start(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    stopping: Stopping,
    num_steps: int,
    policy: CachePolicy | None = None,
    cache: HuginnStaticCache | None = None,
    lookahead: int = 0,
) -> tuple[Tensor | None, HuginnStaticCache]:
    """Check the prompt once; (its mask, None without padding; the cache to decode into): `cache`,
    which must be empty, or a new one sized for prompt + max_new_tokens + `lookahead` drafts."""
    check_token_inputs(input_ids, attention_mask, model.model_config.vocab_size)
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
        return attention_mask, HuginnStaticCache.for_model(
            model, B, num_steps, T + stopping.max_new_tokens + lookahead, policy
        )
    check_cache(cache, B, policy)
    return attention_mask, cache


def prefill(
    model,
    input_ids: Tensor,
    cache: HuginnStaticCache,
    depth: Depth,
    mask: Tensor | None,
    generator=None,
    observer: StepHook | None = None,
    run: BlockRunner | None = None,
) -> TokenResult:
    """The prompt's forward, as one token (at full depth when `depth.exit_in_prefill` is off)."""
    if not depth.exit_in_prefill:
        depth = replace(depth, criterion=None)
    return run_tokens(model, input_ids, cache, depth, mask, generator=generator, observer=observer, run=run)


def decode_one_token(
    model,
    tok: Tensor,
    cache: HuginnStaticCache,
    depth: Depth,
    out: Output,
    last: TokenResult,
    generator=None,
    compiled: bool | FrozenGraph = False,
    observer: StepHook | None = None,
    run: BlockRunner | None = None,
) -> TokenResult:
    """The forward of the tokens `tok` (B,) just pushed to `out` (`last`: the previous token's result)."""
    states = last.latents if depth.continuous else None
    active = out.running if depth.criterion is not None and tok.shape[0] > 1 else None
    return run_tokens(model, tok[:, None], cache, depth, out.mask, states, active, generator, compiled, observer, run)


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
    observer: StepHook | None = None,
    run: BlockRunner | None = None,
) -> Generation:
    """Autoregressive generation: prefill, then one token at a time until every row stops.
    `compile=True` decodes through compiled graphs (`huginn.infer.compiled`): one per token at fixed
    depth; `compile="frozen"` compiles the model's weights into the fixed-depth graph as constants
    (`FrozenGraph`: fastest for bf16 on CPUs with AMX; rebuilt when the weights change).
    `observer(step, state, previous)`: called after every core step of every forward (the prefill,
    then each token; step 1 begins a forward), after exits froze their rows; it may return
    `(state, stop)` to replace the state (see `huginn.model.recurrence`). `run`: the `BlockRunner`
    every group of blocks runs through (default `run_blocks`). Either disables compilation."""
    if compile not in (False, True, "frozen"):
        raise HuginnError(f"compile={compile!r} is not a decoding mode; use False, True or 'frozen'")
    mask, cache = start(model, input_ids, attention_mask, stopping, depth.num_steps, policy, cache)
    out = Output(input_ids, mask, stopping, streamer)
    res = prefill(model, input_ids, cache, depth, mask, generator, observer, run)
    if observer is not None or run is not None:
        compile = False
    compiled = frozen_graph(model) if compile == "frozen" else bool(compile)
    # a frozen graph holds its own packed weights, so the column-major layout is for `compile=True` only
    with decode_layout(model) if compile is True else nullcontext():
        while out.push(next_token(res.logits, out.sequences, sampling, generator, out.seen_mask), res.steps):
            res = decode_one_token(model, out.last, cache, depth, out, res, generator, compiled, observer, run)
    return out.result(cache)


class Output:
    """The stop step every decoder shares: appends one token per row (rows that stopped get
    `pad_token_id` and 0 steps), streams it, and tracks which rows still run."""

    def __init__(self, input_ids: Tensor, mask: Tensor | None, stopping: Stopping, streamer=None):
        self.sequences, self.mask, self.stopping, self.streamer = input_ids, mask, stopping, streamer
        self.running = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.steps: list[Tensor] = []
        if streamer is not None:
            streamer.put(input_ids.cpu())

    @property
    def seen_mask(self) -> Tensor | None:
        """(B, T) real (unpadded) positions of `sequences`, for the repetition penalty."""
        return self.mask.bool() if self.mask is not None else None

    @property
    def last(self) -> Tensor:
        """(B,) the tokens pushed last; a copy, not a view: a view's stride grows with the
        sequences, and each new stride made the compiled token graph compile again (at batch 8
        and 32 steps, a dynamic-shape compile of ~20 minutes on a CPU)."""
        return self.sequences[:, -1].contiguous()

    def push(self, tok: Tensor, steps: Tensor) -> bool:
        """Append `tok` (B,), computed with `steps` (B,); False once every row stopped or
        max_new_tokens are in."""
        self.steps.append(torch.where(self.running, steps, 0))
        tok = torch.where(self.running, tok, self.stopping.pad_token_id)
        self.sequences = torch.cat([self.sequences, tok[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        if self.streamer is not None:
            self.streamer.put(tok.cpu())
        self.running = self.running & ~is_stop(tok, self.sequences, self.stopping)
        return len(self.steps) < self.stopping.max_new_tokens and bool(self.running.any())

    def result(self, cache: HuginnStaticCache, **extras) -> Generation:
        if self.streamer is not None:
            self.streamer.end()
        cache.finish()
        return Generation(self.sequences, torch.stack(self.steps, dim=1), cache, extras)


def is_stop(tok: Tensor, seqs: Tensor, stopping: Stopping) -> Tensor:
    stop = torch.zeros_like(tok, dtype=torch.bool)
    for eos in stopping.eos_ids:
        stop |= tok == eos
    if stopping.stop_strings is not None:
        stop |= stopping.stop_strings(seqs, None).to(stop.device)
    return stop


def check_cache(cache: object, batch: int, policy: CachePolicy | None = None) -> None:
    """A cache passed in is an empty `HuginnStaticCache` for `batch` rows (continuing from a filled
    cache is not supported), and `policy`, if given too, is its own."""
    if not isinstance(cache, HuginnStaticCache):
        raise HuginnError(
            f"generation decodes into a HuginnStaticCache, got {type(cache).__name__}; pass none (one is made)"
        )
    if cache.get_seq_length() != 0 or cache.rows != batch:
        raise HuginnError(
            f"a cache passed to generate must be empty and for {batch} rows, got one with {cache.get_seq_length()} "
            f"tokens and {cache.rows} rows; continuing from a filled cache is not supported: pass none or reset() it"
        )
    if policy is not None and policy != cache.policy:
        raise HuginnError(f"the cache's policy {cache.policy} is not the policy {policy} asked for; pass one of them")


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
