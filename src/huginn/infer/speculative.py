"""Self-speculative decoding: the same model drafts cheaply at `draft_steps` core steps and
verifies at `num_steps`.

Each round drafts `lookahead` tokens one at a time (greedy, at draft depth), rolls the cache back,
and verifies [last token, drafts[:-1]] in one forward at full depth. A draft is accepted when it is
the verifier's argmax (or, with `threshold` < 1, when its verifier probability is at least
threshold * the top probability). Rows of a batch accept the same number of tokens (the smallest
over the batch); the token after the accepted ones is the verifier's own choice, which for every
row is exactly what greedy decoding at `num_steps` picks. So with threshold 1 the output equals
plain greedy decoding (up to float ties), whatever the drafts were. The opening and the stop step
are plain generation's (`start`, `prefill`, `Output`). Non-goals: sampling-based acceptance
(rejection sampling), a separate draft model, compiled drafting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.infer.generate import Depth, Generation, Output, Stopping, prefill, run_tokens, start
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.sampling import Sampling
from huginn.model.recurrence import Schedule


@dataclass(frozen=True)
class Speculation:
    """Draft depth (None: num_steps // 4, at least 1), drafts per round, acceptance threshold."""

    draft_steps: int | None = None
    lookahead: int = 4
    threshold: float = 1.0

    def __post_init__(self) -> None:
        for name, count in (("draft_steps", self.draft_steps), ("lookahead_for_draft", self.lookahead)):
            if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
                raise HuginnError(f"{name} must be an integer >= 1, got {count!r}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise HuginnError(f"verification_threshold must be a number in (0, 1], got {t!r}")

    def for_depth(self, num_steps: int) -> Speculation:
        return Speculation(self.draft_steps or max(1, num_steps // 4), self.lookahead, self.threshold)


def check_speculative(adaptive: bool, continuous: bool, sampling: Sampling, compile: object = False) -> None:
    """Speculative decoding is greedy, at fixed depth, from fresh states, and eager."""
    if sampling.do_sample or (sampling.repetition_penalty not in (None, 1.0)):
        raise HuginnError("speculative decoding is greedy only: set do_sample=False and no repetition_penalty")
    if adaptive:
        raise HuginnError("speculative decoding runs a fixed num_steps; drop criterion/exit_threshold or draft_steps")
    if continuous:
        raise HuginnError("speculative decoding does not support continuous_compute")
    if compile is not False:
        raise HuginnError("speculative decoding runs eagerly; drop compile or draft_steps")


@torch.no_grad()
def speculative_generate(
    model,
    input_ids: Tensor,
    depth: Depth,
    stopping: Stopping,
    speculation: Speculation = Speculation(),
    sampling: Sampling = Sampling(),
    attention_mask: Tensor | None = None,
    policy: CachePolicy | None = None,
    cache: HuginnStaticCache | None = None,
    streamer=None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Greedy generation at `depth.num_steps`, drafted at `speculation.draft_steps`;
    extras["acceptance_rate"]: accepted / drafted tokens."""
    check_speculative(depth.criterion is not None, depth.continuous, sampling)
    spec = speculation.for_depth(depth.num_steps)
    mask, cache = start(model, input_ids, attention_mask, stopping, depth.num_steps, policy, cache, spec.lookahead)
    out = Output(input_ids, mask, stopping, streamer)
    full = Depth(depth.num_steps, init_scale=depth.init_scale)
    draft = Depth(spec.draft_steps or 1, init_scale=depth.init_scale)
    x0 = prefill(model, input_ids, cache, full, mask, generator).logits.argmax(-1)
    drafted = accepted = 0
    fresh = x0[:, None]
    while _push(out, fresh, depth.num_steps):
        L = min(spec.lookahead, stopping.max_new_tokens - len(out.steps))
        running = out.running  # rows that stopped draft after padding: they neither limit nor count
        fresh, lead = speculate(model, cache, out.last, mask, running, full, draft, L, spec.threshold, generator)
        drafted, accepted = drafted + L * int(running.sum()), accepted + int(lead[running].clamp(max=L).sum())
    return out.result(cache, acceptance_rate=accepted / drafted if drafted else 0.0)


def _push(out: Output, tokens: Tensor, num_steps: int) -> bool:
    """Push the columns of `tokens` (B, n); False once generation is over."""
    steps = torch.full_like(tokens[:, 0], num_steps)
    return all(out.push(tok, steps) for tok in tokens.unbind(1))


def speculate(
    model,
    cache: HuginnStaticCache,
    x0: Tensor,
    mask: Tensor | None,
    running: Tensor,
    full: Depth,
    draft: Depth,
    L: int,
    threshold: float,
    generator=None,
) -> tuple[Tensor, Tensor]:
    """One round after the last token `x0` (B,): (the new tokens (B, n <= L), each row's count of
    leading accepted drafts (B,)); `running` rows decide how many are taken. The cache ends
    holding the new tokens but the last."""
    base = cache.get_seq_length()
    tok, drafts = x0, list[Tensor]()
    for _ in range(L):
        cols = mask_upto(mask, base + len(drafts) + 1)
        tok = run_tokens(model, tok[:, None], cache, draft, cols, generator=generator).logits.argmax(-1)
        drafts.append(tok)
    cache.crop(base)
    d = torch.stack(drafts, 1)  # (B, L)
    v = verify(model, torch.cat([x0[:, None], d[:, :-1]], dim=1), cache, full, mask_upto(mask, base + L), generator)
    vtok = v.argmax(-1)
    if threshold >= 1:
        ok = vtok == d
    else:
        probs = torch.softmax(v, -1)
        ok = probs.gather(-1, d[..., None])[..., 0] >= threshold * probs.amax(-1)
    lead = ok.long().cumprod(dim=1).sum(dim=1)  # (B,) leading accepted drafts per row
    a = int(lead[running].min())
    if a == L:
        return d, lead
    cache.crop(base + a + 1)
    return torch.cat([d[:, :a], vtok[:, a : a + 1]], dim=1), lead


def verify(model, ids: Tensor, cache: HuginnStaticCache, depth: Depth, mask: Tensor | None, generator) -> Tensor:
    """(B, S, V) logits of every position of `ids` at fixed depth (the coda writes every position's entries)."""
    B, S = ids.shape
    ctx = model.context(B, S, mask, None, cache)
    e = model.embed(ids, ctx)
    state = model.initialize_state(e, depth.init_scale, generator)
    state = model.recur(state, e, ctx, Schedule.plain(depth.num_steps)).state
    return model.predict(state, ctx)[0]


def mask_upto(mask: Tensor | None, cols: int) -> Tensor | None:
    """The prompt's mask (B, T) extended with real columns to `cols` (None without padding)."""
    if mask is None:
        return None
    return torch.cat([mask, mask.new_ones(mask.shape[0], cols - mask.shape[1])], dim=1)
