"""Parallel sampling across depth and tokens: the diffusion-forcing sampler of Geiping, Yang & Su
("Efficient Parallel Samplers for Recurrent-Depth Models", arXiv 2510.14961), batch-capable.

Sequential decoding runs `num_steps` core steps on one token, then the next. This sampler keeps a
*wavefront* of up to `wavefront` unfinished positions per row and advances all of them together:
every model forward runs `inner_steps` core steps over the whole wavefront (continuing each
position's state), decodes a provisional next token at every position, appends one new position
at the end, and *freezes* (commits) the leading positions that have converged. So a new token
enters at every forward while earlier ones are still being refined, "diagonally" over positions x
steps (docs/inference.md has the figure).

A forward over a row's wavefront, columns `f .. f + w - 1` (f: the first unfinished position):
the prelude embeds their current tokens, the recurrence (`model.recur`, the one loop) runs
`inner_steps` core steps from their carried states, the coda and head give logits at every
position, and position `i` proposes the token of position `i + 1`. Position f + i is committed when
every position before it in the wavefront is committed in this forward, its state converged, and
its own input token did not change in this forward (else its state was computed from a stale token
and is recomputed next time). Converged means: it has run `num_steps` core steps in total, or
(with a `freeze_threshold`) its normalised latent change over this forward,
||s_after - s_before|| / ||s_after||, is below the threshold (the paper's criterion). Committing a
position fixes the token it predicts: that token is emitted (streamed once every row has it).

KV policy. Committed positions keep the KV entries their committing forward wrote; unfinished
positions write theirs at every forward into fresh columns after the committed ones, are read by
later positions of the same forward (causally), and are dropped afterwards (`cache.crop`), so an
unfinished position's entries are always those of its current iterate. Core steps within a
forward are numbered 0 .. inner_steps - 1, so the cache's policy decides what a core layer reads
of the committed prefix: the default here, `compress-sR` for an R-layer core (one slot per core
layer holding its latest step; the reference's default for this sampler), gives every position
the final-step entries of the prefix whatever its own depth. With any other policy positions read
the prefix's entries of the same step *within their forward*, which matches sequential decoding
only when `inner_steps == num_steps`; that case (every position runs all its steps in one
forward) defaults to sequential decoding's own policy, a slot per (step, layer).

Batches. Every row has its own frontier and freezes on its own. The cache's columns are shared, so
a forward commits the largest count any row committed; a row that committed fewer marks its extra
columns as holes (masked out of attention, not counted in positions), and every row gets what it
gets alone. Stop tokens and `max_new_tokens` end a row's wavefront; stop strings end it once the
column reaches the shared output (`Output.push`, the stop step every decoder shares).

Exact special case: `wavefront=1` and no early freezing give sequential decoding at `num_steps`
token for token, under the same cache policy (with `inner_steps == num_steps` under any policy;
else under `compress-sR`, the default then); `tests/infer/test_parallel.py` checks it on the reference fixture and in padded
batches.

Compiled (`compile=True`): each wavefront forward is one compiled graph (`huginn.infer.compiled.
decode_span`: prelude, core steps, coda and head, the wavefront's width a dynamic dimension), with
the linears in the decoding layout; the same work in fewer, fused kernels.
Non-goals: `headway` > 1 (guessed tokens past the first new one), the reference's EMA of
embeddings, repetition penalties, a frozen-weights graph, adaptive exit criteria other than the
latent distance.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.infer.compiled import decode_layout, decode_span
from huginn.infer.generate import Depth, Generation, Output, Stopping, prefill, start
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.sampling import Sampling, filtered_probs, next_token
from huginn.model.recurrence import Schedule

StateInit = Literal["fresh", "previous"]
STATE_INITS: tuple[StateInit, ...] = get_args(StateInit)


@dataclass(frozen=True)
class ParallelSampling:
    """The sampler's knobs (reference names in brackets).

    - `wavefront` [max_wavefront]: unfinished positions advanced together per row (1: sequential).
    - `inner_steps` [inner_recurrence]: core steps per forward; must divide `num_steps`.
    - `freeze_threshold` [exit_t]: freeze a position early once ||s_t - s_{t-r}|| / ||s_t|| falls
      below it (the paper's 0.03); None: only after `num_steps` steps (the reference's "fixed").
    - `init`: a new position's first state: "fresh" (the model's initial state, `init_scale`) or
      "previous" (a copy of the position before it: the reference's `continuous_compute`).
    - `noise_mixing` [state_noise_mixing]: before each forward, mix every unfinished state with
      fresh initial noise, weight noise_mixing / (1 + steps so far) (the reference's dampened
      mixer, 0.5 there); 0 turns it off (the default: deterministic with init_scale=0)."""

    wavefront: int = 16
    inner_steps: int = 4
    freeze_threshold: float | None = 0.03
    init: StateInit = "fresh"
    noise_mixing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("wavefront", "inner_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HuginnError(f"{name} must be an integer >= 1, got {v!r}")
        t = self.freeze_threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0):
            raise HuginnError(f"freeze_threshold must be a number >= 0 (or None: freeze only at num_steps), got {t!r}")
        if self.init not in STATE_INITS:
            raise HuginnError(f"unknown state init {self.init!r}; valid: {', '.join(STATE_INITS)}")
        m = self.noise_mixing
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
            raise HuginnError(f"state_noise_mixing must be a number in [0, 1], got {m!r}")

    def check_depth(self, num_steps: int) -> None:
        if num_steps % self.inner_steps:
            raise HuginnError(
                f"num_steps ({num_steps}) must be a multiple of inner_recurrence ({self.inner_steps}); "
                f"e.g. inner_recurrence={math.gcd(num_steps, self.inner_steps)}"
            )


def check_parallel(adaptive: bool, sampling: Sampling, compile: object, speculative: bool) -> None:
    """What the parallel sampler does not compose with (one line each)."""
    if speculative:
        raise HuginnError("the parallel sampler and speculative decoding do not compose; drop draft_steps or sampler")
    if adaptive:
        raise HuginnError(
            "the parallel sampler freezes positions by freeze_threshold (latent distance); drop criterion/exit_threshold"
        )
    if sampling.repetition_penalty not in (None, 1.0):
        raise HuginnError("the parallel sampler does not support repetition_penalty; drop it")
    if compile not in (False, True):
        raise HuginnError(
            "the parallel sampler compiles with compile=True only (its weights stay parameters); drop 'frozen'"
        )


def default_policy(n_core_layers: int, inner_steps: int, num_steps: int) -> CachePolicy:
    """The sampler's KV policy: one slot per core layer holding its latest step (compress-sR),
    unless every position runs all its steps in one forward (`inner_steps == num_steps`): then each
    (step, layer) keeps its own slot, as in sequential decoding's default."""
    if inner_steps == num_steps:
        return CachePolicy()
    return CachePolicy(share="cycle", n=n_core_layers, lookup="latest")


@dataclass
class Wavefront:
    """Per-row bookkeeping of the unfinished positions (slot i of row b is column front[b] + i of `tokens`)."""

    tokens: Tensor  # (B, T + max_new + W + 1) prompt, committed and provisional tokens, by output column
    front: Tensor  # (B,) long: the first unfinished column (its token is final)
    width: Tensor  # (B,) long: unfinished positions held (0: the row is finished)
    states: Tensor  # (B, W, d) their states
    steps: Tensor  # (B, W) long: core steps each has run
    kv_mask: Tensor  # (B, cache length) 1 where the cache column is a real token of the row
    last: int  # the last column whose position is needed (it predicts the last new token)
    gumbel: Tensor | None = None  # (B, W, V) each position's fixed sampling noise (when sampling)
    step_record: list[list[int]] = field(default_factory=list)  # per row: core steps of each committed position
    early: list[list[bool]] = field(default_factory=list)  # per row: whether each froze before num_steps
    final_states: list[list[Tensor]] | None = None  # per row: each committed position's state (when recorded)
    inputs: list[list[int]] = field(default_factory=list)  # per row: the token each committed state was computed from


@torch.no_grad()
def parallel_generate(
    model,
    input_ids: Tensor,
    depth: Depth,
    stopping: Stopping,
    parallel: ParallelSampling = ParallelSampling(),
    sampling: Sampling = Sampling(),
    attention_mask: Tensor | None = None,
    policy: CachePolicy | None = None,
    cache: HuginnStaticCache | None = None,
    streamer=None,
    generator: torch.Generator | None = None,
    record_states: bool = False,
    trace: list | None = None,
    compile: bool = False,
) -> Generation:
    """Generate with the diffusion-forcing sampler (see the module docstring). The prompt's forward
    runs `depth.num_steps` steps as in sequential decoding. `extras`: `forwards` (model forwards,
    the prompt's included), `core_passes` (core steps run in sequence: prompt + forwards x
    inner_steps), `position_steps` (core steps summed over positions, the work done),
    `early_freezes` (positions frozen by the threshold before num_steps); with `record_states`,
    `states`: per row, the final state of every committed position (B lists of (d,) tensors, in
    order: the position of the first new token first), `inputs`: the token each was computed from,
    and `early`: whether each froze before num_steps. `trace`: a list that receives, after every
    forward, row 0's (front column, core steps of each wavefront position, committed count) (the
    docs' figure). `compile`: the wavefront forwards run through compiled graphs (module docstring)."""
    check_parallel(depth.criterion is not None, sampling, compile, False)
    with decode_layout(model) if compile else nullcontext():
        return _generate(
            model, input_ids, depth, stopping, parallel, sampling, attention_mask, policy, cache, streamer,
            generator, record_states, trace, compile,
        )  # fmt: skip


def _generate(
    model, input_ids, depth, stopping, parallel, sampling, attention_mask, policy, cache, streamer, generator,
    record_states, trace, compile,
) -> Generation:  # fmt: skip
    n = depth.num_steps
    parallel.check_depth(n)
    R = model.model_config.n_layers_in_recurrent_block
    if policy is None and cache is None:
        policy = default_policy(R, parallel.inner_steps, n)
    mask, cache = start(model, input_ids, attention_mask, stopping, n, policy, cache, parallel.wavefront)
    out = Output(input_ids, mask, stopping, streamer)
    B, T = input_ids.shape
    dev = input_ids.device
    res = prefill(model, input_ids, cache, Depth(n, init_scale=depth.init_scale), mask, generator)
    x0 = next_token(res.logits, out.sequences, sampling, generator, out.seen_mask)
    real_prompt = int(mask.sum()) if mask is not None else B * T
    stats = {"forwards": 1, "core_passes": n, "position_steps": n * real_prompt, "early_freezes": 0}
    if not out.push(x0, res.steps):
        return out.result(cache, **stats)
    d = model.model_config.n_embd
    W = parallel.wavefront
    dtype = model.transformer.wte.weight.dtype
    # output columns, plus W spare ones so that every wavefront slot has a column to propose into
    tokens = torch.zeros(B, T + stopping.max_new_tokens + W + 1, dtype=torch.long, device=dev)
    tokens[:, :T], tokens[:, T] = input_ids, x0
    states = torch.zeros(B, W, d, dtype=dtype, device=dev)
    states[:, :1] = _new_state(model, states[:, :1], depth, generator)
    wf = Wavefront(
        tokens=tokens,
        front=torch.full((B,), T, dtype=torch.long, device=dev),
        width=out.running.long(),
        states=states,
        gumbel=_gumbel(B, W, model.lm_head.out_features, dev, generator) if sampling.do_sample else None,
        steps=torch.zeros(B, W, dtype=torch.long, device=dev),
        kv_mask=mask.long() if mask is not None else torch.ones(B, T, dtype=torch.long, device=dev),
        last=T + stopping.max_new_tokens - 2,
        step_record=[[] for _ in range(B)],
        early=[[] for _ in range(B)],
        final_states=[[] for _ in range(B)] if record_states else None,
        inputs=[[] for _ in range(B)],
    )
    pushed = 1  # new tokens handed to `out` (the prompt's is the first)
    while bool((wf.width > 0).any()):
        front = int(wf.front[0])
        forward(model, cache, wf, parallel, depth, n, sampling, stopping, generator, stats, compile)
        if trace is not None:
            k = int(wf.front[0]) - front
            trace.append(
                (
                    front - T,
                    wf.step_record[0][len(wf.step_record[0]) - k :] + wf.steps[0, : int(wf.width[0])].tolist(),
                    k,
                )
            )
        # hand over the columns every running row has (rows that stopped get padding from `out`)
        while True:
            done = (wf.front - T + 1).tolist()  # tokens committed per row
            live = [done[b] for b in range(B) if bool(out.running[b])]
            if not live or pushed >= min(live):
                break
            steps = [rec[pushed - 1] if pushed - 1 < len(rec) else 0 for rec in wf.step_record]
            if not out.push(wf.tokens[:, T + pushed], torch.tensor(steps, dtype=torch.long, device=dev)):
                return _result(out, cache, wf, stats)
            pushed += 1
        wf.width = torch.where(out.running, wf.width, 0)
    return _result(out, cache, wf, stats)


def _result(out: Output, cache: HuginnStaticCache, wf: Wavefront, stats: dict) -> Generation:
    if wf.final_states is not None:
        stats = dict(stats, states=wf.final_states, early=wf.early, inputs=wf.inputs)
    return out.result(cache, **stats)


def _gumbel(B: int, W: int, V: int, device, generator) -> Tensor:
    u = torch.rand(B, W, V, device=device, generator=generator).clamp(min=1e-20, max=1 - 1e-7)
    return -(-u.log()).log()


def _new_state(model, like: Tensor, depth: Depth, generator) -> Tensor:
    return model.initialize_state(like, depth.init_scale, generator)


def forward(
    model,
    cache: HuginnStaticCache,
    wf: Wavefront,
    parallel: ParallelSampling,
    depth: Depth,
    num_steps: int,
    sampling: Sampling,
    stopping: Stopping,
    generator,
    stats: dict,
    compile: bool = False,
) -> None:
    """One forward over every row's wavefront: refine, propose tokens, commit, shift, append."""
    B, W = wf.steps.shape
    dev = wf.front.device
    S = int(wf.width.max())
    if compile and W > 1:
        # compiled, a wavefront is at least two wide (a second, masked slot: id 0, no KV), so that
        # every forward takes the one graph whose width is dynamic (dynamo specialises width 1),
        # and the cache keeps a spare column, so that the graph is not specialised to a full cache
        S = max(S, 2)
        cache.reserve(cache.get_seq_length() + S + 1)
    slot = torch.arange(S, device=dev)
    real = slot[None] < wf.width[:, None]  # (B, S) slots holding a position
    cols = wf.front[:, None] + slot[None]  # (B, S) their output columns
    ids = torch.where(real, wf.tokens.gather(1, cols), 0)
    before = wf.states[:, :S]
    state = before
    if parallel.noise_mixing > 0:
        w = (parallel.noise_mixing / (1 + wf.steps[:, :S]))[..., None].to(state.dtype)
        state = state * (1 - w) + w * _new_state(model, state, depth, generator)
    # --- the model forward: prelude, inner_steps core steps, coda and head, over the wavefront ----
    past = cache.get_seq_length()
    kv_mask = torch.cat([wf.kv_mask, real.long()], dim=1)
    ctx = model.context(B, S, kv_mask, None, cache)
    steps = wf.steps[:, :S] + parallel.inner_steps
    gumbel = wf.gumbel[:, :S] if wf.gumbel is not None else None
    # the last column and the threshold as tensors: a compiled graph would be specialised to them
    last = torch.tensor(wf.last, device=dev)
    thr = parallel.freeze_threshold
    threshold = None if thr is None else torch.tensor(thr, dtype=torch.float32, device=dev)
    compiled = compile and S > 1  # the forward and `settle` as one compiled graph
    if compiled:
        # views of the wavefront's tensors would tie the width to their capacity in the graph: copies,
        # with standard strides even where B is 1
        dense = torch.contiguous_format
        state, before, steps = (t.clone(memory_format=dense) for t in (state, before, steps))
        gumbel = gumbel.clone(memory_format=dense) if gumbel is not None else None
    rules = (last, num_steps, threshold, tuple(stopping.eos_ids or ()), sampling)
    args = (before, steps, gumbel, wf.tokens, cols, real, wf.states, wf.steps, wf.gumbel, wf.front, wf.width, *rules)
    if compiled:
        # widths, the wavefront's capacity and the output length vary: one graph for all of them
        for t in (state, before, steps, gumbel, cols, real, wf.tokens, wf.states, wf.steps, wf.gumbel):
            if t is not None:
                torch._dynamo.maybe_mark_dynamic(t, 1)
        settled = decode_span(model, ids, cache, parallel.inner_steps, ctx.rope, state, kv_mask, settle, args)
    else:
        e = model.embed(ids, ctx)
        state = model.recur(state, e, ctx, Schedule.plain(parallel.inner_steps)).state
        settled = settle(model.predict(state, ctx)[0], state, *args)
    r: Settled = settled
    state, commit, committed, states, width, put = r.state, r.commit, r.committed, r.states, r.width, r.put
    wf.tokens, wf.steps, wf.gumbel, wf.front = r.tokens, r.steps, r.gumbel, r.front
    stats["forwards"] += 1
    stats["core_passes"] += parallel.inner_steps
    stats["position_steps"] += parallel.inner_steps * int(wf.width.sum())
    early = r.early.tolist()
    for b, (k, row) in enumerate(zip(commit.tolist(), steps.tolist())):
        wf.step_record[b].extend(row[:k])
        wf.early[b].extend(early[b][:k])
        stats["early_freezes"] += sum(early[b][:k])
        if wf.final_states is not None:
            wf.final_states[b].extend(state[b, :k].unbind(0))
            wf.inputs[b].extend(ids[b, :k].tolist())
    # --- the cache keeps the committed columns; the others held unfinished positions ---------------
    n_keep = int(commit.max())
    cache.crop(past + n_keep)
    wf.kv_mask = torch.cat([wf.kv_mask, committed[:, :n_keep].long()], dim=1)  # holes: fewer committed
    # --- append one new position where there is room (`settle` shifted by the committed count) ----
    if bool(put.any()):
        new = r.previous if parallel.init == "previous" else _new_state(model, states[:, :1], depth, generator)
        states = torch.where(put[..., None], new, states)
        if wf.gumbel is not None:
            fresh = _gumbel(B, 1, wf.gumbel.shape[-1], dev, generator)
            wf.gumbel = torch.where(put[..., None], fresh, wf.gumbel)
        wf.steps = torch.where(put, 0, wf.steps)
    wf.states, wf.width = states, width


class Settled(NamedTuple):
    """What `settle` returns: the forward's final states (B, S, d), the tokens with the proposals
    written, commit (B,), committed (B, S), early (B, S): committed before num_steps; after the
    shift: states (B, W, d), steps (B, W), gumbel, front (B,), width (B,), put (B, W): where a new
    position goes, previous (B, 1, d): the state of the position before it."""

    state: Tensor
    tokens: Tensor
    commit: Tensor
    committed: Tensor
    early: Tensor
    states: Tensor
    steps: Tensor
    gumbel: Tensor | None
    front: Tensor
    width: Tensor
    put: Tensor
    previous: Tensor


def settle(
    logits: Tensor,
    state: Tensor,
    before: Tensor,
    steps: Tensor,
    gumbel: Tensor | None,
    tokens: Tensor,
    cols: Tensor,
    real: Tensor,
    states: Tensor,
    all_steps: Tensor,
    all_gumbel: Tensor | None,
    front: Tensor,
    width: Tensor,
    last: Tensor,
    num_steps: int,
    threshold: Tensor | None,
    eos_ids: tuple[int, ...],
    sampling: Sampling,
) -> Settled:
    """What follows the model in a forward over the wavefront (B, S): `decide`, then `shift`. Pure
    tensor code, so that with `compile=True` it is traced into the forward's graph."""
    tokens, commit, committed, early, stop_at = decide(
        logits, gumbel, tokens, cols, real, state, before, steps, num_steps, threshold, eos_ids, sampling
    )
    shifted = shift(states, all_steps, all_gumbel, state, steps, commit, front, width, stop_at, last)
    return Settled(state, tokens, commit, committed, early, *shifted)


def decide(
    logits: Tensor,
    gumbel: Tensor | None,
    tokens: Tensor,
    cols: Tensor,
    real: Tensor,
    state: Tensor,
    before: Tensor,
    steps: Tensor,
    num_steps: int,
    threshold: Tensor | None,
    eos_ids: tuple[int, ...],
    sampling: Sampling,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """After a forward over the wavefront (B, S): propose, decide what is committed, find stops.
    Returns (tokens with the proposals written, commit (B,) leading slots committed, committed
    (B, S), early (B, S) committed before `num_steps`, stop_at (B,) slot of a committed stop token
    or -1)."""
    B, S = real.shape
    # proposals: slot i proposes the token of column cols[i] + 1
    if gumbel is None:
        proposed = logits.argmax(dim=-1)  # greedy (`next_token` without sampling)
    else:  # a sample with the position's own fixed noise: it changes only where the distribution does
        probs = filtered_probs(logits.reshape(B * S, -1), sampling).view(B, S, -1)
        proposed = (probs.log() + gumbel).argmax(dim=-1)
    old = tokens.gather(1, cols + 1)
    changed = real & (old != proposed)  # the input token of slot i + 1 changed
    tokens = tokens.scatter(1, cols + 1, torch.where(real, proposed, old))
    # commit the leading converged slots whose input token stood
    at_cap = steps >= num_steps
    converged = at_cap
    if threshold is not None:
        diff = (state - before).float().norm(dim=-1) / state.float().norm(dim=-1).clamp(min=1e-12)
        converged = converged | (diff < threshold)
    # slot i's input is slot i - 1's proposal (a roll, not a slice of S - 1: a compiled graph would
    # specialise to that size being 1)
    slot = torch.arange(S, device=real.device)
    stale = changed.roll(1, dims=1) & (slot > 0)
    commit = (real & converged & ~stale).long().cumprod(dim=1).sum(dim=1)
    committed = slot[None] < commit[:, None]
    # a committed stop token ends the row there (the token at the front is always final)
    stop_at = torch.full_like(commit, -1)
    if eos_ids:
        is_eos = torch.zeros_like(committed)
        for eos in eos_ids:
            is_eos = is_eos | (proposed == eos)
        hit = is_eos & committed
        stop_at = torch.where(hit.any(dim=1), hit.long().argmax(dim=1), -1)
    return tokens, commit, committed, committed & ~at_cap, stop_at


def shift(
    states: Tensor,
    all_steps: Tensor,
    gumbel: Tensor | None,
    state: Tensor,
    steps: Tensor,
    commit: Tensor,
    front: Tensor,
    width: Tensor,
    stop_at: Tensor,
    last: Tensor,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor, Tensor]:
    """Drop each row's committed slots and make room for one new position where there is any.
    Returns (states (B, W, d), steps (B, W), gumbel, front, width, put (B, W): where the new
    position goes, previous (B, 1, d): the state of the position before it, as it is now)."""
    W = all_steps.shape[1]
    S = state.shape[1]
    d = states.shape[-1]
    # the wavefront's slots with this forward's first S replaced (a scatter, not a concatenation
    # with the last W - S: a compiled graph would specialise to that size being 0 or 1)
    first = torch.arange(S, device=front.device)[None].expand(all_steps.shape[0], -1)
    full_states = states.scatter(1, first[..., None].expand(-1, -1, d), state)
    full_steps = all_steps.scatter(1, first, steps)
    slots = torch.arange(W, device=front.device)[None]
    idx = (slots + commit[:, None]).clamp(max=W - 1)
    states = full_states.gather(1, idx[..., None].expand(-1, -1, d))
    all_steps = full_steps.gather(1, idx)
    if gumbel is not None:
        gumbel = gumbel.gather(1, idx[..., None].expand(-1, -1, gumbel.shape[-1]))
    moved = front + commit
    kept = width - commit
    new_width = torch.minimum((kept + 1).clamp(max=W), (last - moved + 1).clamp(min=0))
    new_width = torch.where((stop_at >= 0) | (width == 0), 0, new_width)
    at = (new_width - 1).clamp(min=0)  # the new slot, after the shift
    put = (new_width > kept)[:, None] & (slots == at[:, None])
    src = (commit + at - 1).clamp(min=0, max=W - 1)
    previous = full_states.gather(1, src[:, None, None].expand(-1, 1, d))
    # a row that committed a stop token: its last committed token is that one
    moved = torch.where(stop_at >= 0, moved - commit + stop_at + 1, moved)
    return states, all_steps, gumbel, moved, new_width, put, previous
