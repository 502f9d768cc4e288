"""Scoring continuations at a chosen depth: the log-likelihood computation behind the lm-eval model.

`loglikelihoods(model, items, depth, ...)` takes `(context_ids, continuation_ids)` pairs and returns,
per pair, the summed log-probability of the continuation and whether greedy decoding would have
produced it (lm-eval's `(logprob, is_greedy)`). Batches are left-padded with an attention mask, so
every row gets what it gets alone.

At fixed depth a context shared by several continuations (the choices of a multiple-choice question)
is computed once: its KV entries for every cache slot are prefilled into a `HuginnStaticCache`, the
cache's rows are copied to one row per continuation (`reorder_cache`), and only the continuations
run on top. Recurrent depth makes that reuse worth more than in a plain transformer: the context
costs `num_steps` core passes. The result equals a forward of `context + continuation` (the
fixed-depth recurrence is causal step by step; `tests/eval/test_lm.py` checks it).

With an exit criterion the unit of depth is the sequence: `context + continuation` runs as one
forward (the prefill semantics of `huginn.infer.generate`: its positions iterate together and exit
together, through the same `ExitHook`), each row of a batch exits on its own, and its recorded step
count is its depth. No context is shared there: the continuation would change where it exits.

`Tally` counts the tokens run and the core steps spent on them (mean core steps per token). Non-goals:
tokenization and truncation (the lm-eval adapter, `huginn.eval.lm`), generation (`huginn.infer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from huginn.infer.generate import Depth, ExitHook
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.model.recurrence import Schedule

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids), both non-empty


@dataclass
class Tally:
    """Tokens run through the model and the core steps they took (for mean core steps per token)."""

    tokens: int = 0
    step_tokens: int = 0

    def add(self, tokens: Tensor, steps: Tensor) -> None:
        """`tokens` (B,) real tokens per row, `steps` (B,) core steps each of them took."""
        self.tokens += int(tokens.sum())
        self.step_tokens += int((tokens * steps).sum())

    @property
    def mean_steps(self) -> float:
        return self.step_tokens / self.tokens if self.tokens else 0.0


class _NoCache:
    """Stands in for a cache where a forward keeps none (`ExitHook` freezes rows through it)."""

    def set_active_rows(self, rows: Tensor | None) -> None:
        pass


def left_pad(seqs: Sequence[list[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    """(ids, mask), both (B, longest), left-padded."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: Sequence[list[int]], width: int, pad: int = 0) -> tuple[Tensor, Tensor]:
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def _log_probs(model, hidden: Tensor) -> Tensor:
    """Log-probabilities over the real vocabulary (the padded head rows are no tokens)."""
    logits = model.lm_head(hidden)[..., : model.model_config.vocab_size]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.log_softmax(logits, dim=-1)


def _log_probs_at(model, hidden: Tensor, starts: list[int], length: int) -> Tensor:
    """(B, length, V) log-probs of positions starts[b] .. starts[b] + length - 1 of each row (clamped
    to the sequence): the head runs only where a continuation is scored."""
    B, S, d = hidden.shape
    pos = torch.tensor([[min(s + i, S - 1) for i in range(length)] for s in starts], device=hidden.device)
    return _log_probs(model, hidden.gather(1, pos[..., None].expand(B, length, d)))


def run_sequence(
    model, ids: Tensor, mask: Tensor | None, depth: Depth, cache: HuginnStaticCache | None = None
) -> tuple[Tensor, Tensor]:
    """One forward of `ids` (B, S) at `depth`: (the head's input (B, S, d), core steps per row (B,)).
    `mask` covers the cache's tokens and the new ones (None: no padding to hide). With an exit
    criterion each row exits on its own (no cache: the whole sequence is one prefill)."""
    B, S = ids.shape
    device = model.freqs_cis.device
    ids = ids.to(device)
    mask = mask.to(device) if mask is not None else None
    if mask is not None and bool(mask.all()):
        mask = None
    ctx = model.context(B, S, mask, None, cache)
    e = model.embed(ids, ctx)
    state = model.initialize_state(e, depth.init_scale)
    if depth.criterion is None:
        state = model.recur(state, e, ctx, Schedule.plain(depth.num_steps)).state
        steps = torch.full((B,), depth.num_steps, dtype=torch.long)
    else:
        assert cache is None, "adaptive scoring keeps no cache"
        seq_mask = mask[:, -S:].bool() if mask is not None else None
        running = torch.ones(B, dtype=torch.bool, device=device)
        hook = ExitHook(model, ctx, _NoCache(), depth, running, state, seq_mask)
        state = model.recur(state, e, ctx, Schedule.plain(depth.num_steps), hook=hook).state
        steps = hook.steps.cpu()
    hidden, _ = model.readout(state, ctx)
    if cache is not None:
        cache.finish()
    return hidden, steps


def _score_rows(logp: Tensor, targets: list[list[int]]) -> list[tuple[float, bool]]:
    """Per row b: sum of logp[b, i, targets[b][i]] and whether each target is the argmax."""
    out = []
    for b, tgt in enumerate(targets):
        rows = logp[b, : len(tgt)]
        t = torch.tensor(tgt, dtype=torch.long, device=rows.device)
        lp = rows.gather(-1, t[:, None]).squeeze(-1)
        out.append((float(lp.double().sum()), bool((rows.argmax(-1) == t).all())))
    return out


@torch.inference_mode()  # no autograd bookkeeping at all (measured ~5% on a forward)
def score_direct(model, pairs: Sequence[Pair], depth: Depth, tally: Tally | None = None) -> list[tuple[float, bool]]:
    """Each pair as one sequence `(context + continuation)[:-1]`. At fixed depth the batch is
    right-padded and needs no mask (a causal model's real tokens never see the padding after them);
    with an exit criterion it is left-padded with a mask, so that every row's last position is real
    (logit criteria read it) and latent criteria average over real positions only."""
    seqs = [(c + x)[:-1] for c, x in pairs]
    longest = max(len(x) for _, x in pairs)
    if depth.criterion is None:
        ids, mask = _right_pad(seqs, max(len(s) for s in seqs))
        starts = [len(s) - len(x) for s, (_, x) in zip(seqs, pairs, strict=True)]
        hidden, steps = run_sequence(model, ids, None, depth)
    else:
        ids, mask = left_pad(seqs)
        starts = [ids.shape[1] - len(x) for _, x in pairs]
        hidden, steps = run_sequence(model, ids, mask, depth)
    if tally is not None:
        tally.add(mask.sum(1), steps)
    return _score_rows(_log_probs_at(model, hidden, starts, longest), [x for _, x in pairs])


@torch.inference_mode()  # no autograd bookkeeping at all (measured ~5% on a forward)
def score_shared(
    model,
    contexts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    owner: Sequence[int],
    depth: Depth,
    policy: CachePolicy | None = None,
    tally: Tally | None = None,
) -> list[tuple[float, bool]]:
    """Fixed depth: every context once, then continuation j on a copy of context `owner[j]`'s KV.

    The contexts are one right-padded prefill into a cache (no mask: causal); each context's last
    real position predicts its continuations' first token; the cache's rows are copied to one row
    per continuation and the continuations (minus their last token, right-padded) run on top of it,
    with a mask that hides the contexts' padding (positions come from the mask, so they continue
    each context's own)."""
    assert depth.criterion is None, "shared contexts are for fixed depth"
    ctx_ids, ctx_mask = _right_pad(contexts, max(len(c) for c in contexts))
    G, T = ctx_ids.shape
    longest = max(len(x) for x in continuations)
    cache = HuginnStaticCache.for_model(model, G, depth.num_steps, T + max(longest - 1, 1), policy)
    hidden, _ = run_sequence(model, ctx_ids, None, depth, cache)
    last = _log_probs_at(model, hidden, [len(c) - 1 for c in contexts], 1)  # (G, 1, V)
    if tally is not None:
        tally.add(ctx_mask.sum(1), torch.full((G,), depth.num_steps))
    rows = torch.tensor(owner, dtype=torch.long)
    first = last[rows.to(last.device)]  # (N, 1, V): predicts each continuation's first token
    logp = first
    if longest > 1:
        cache.reorder_cache(rows)  # type: ignore[arg-type]  # one copy of its context's entries per continuation
        cache.rows = len(owner)
        tail_ids, tail_mask = _right_pad([x[:-1] for x in continuations], longest - 1)
        mask = torch.cat([ctx_mask[rows], tail_mask], dim=1)
        hidden_tail, _ = run_sequence(model, tail_ids, mask, depth, cache)  # (N, longest - 1, d)
        if tally is not None:
            tally.add(tail_mask.sum(1), torch.full((len(owner),), depth.num_steps))
        logp = torch.cat([first, _log_probs(model, hidden_tail)], dim=1)
    return _score_rows(logp, [list(x) for x in continuations])


def worth_sharing(context: list[int], continuations: Sequence[list[int]]) -> bool:
    """Whether computing `context` once saves work: the context tokens saved by not repeating it
    must outnumber the continuation tokens (the shared pass attends through a cache and a mask)."""
    return len(continuations) > 1 and (len(continuations) - 1) * len(context) >= sum(len(x) for x in continuations)


def batches(pairs: Sequence[Pair], batch_size: int, share: bool) -> list[tuple[list[int], bool]]:
    """Request indices in batches of at most `batch_size` continuations, longest first (lm-eval's
    order: padding stays small, and memory trouble shows up at once), and whether the batch shares
    contexts. With `share`, continuations of one context that is `worth_sharing` go in one batch
    (split only when there are more than `batch_size` of them); the rest are batched directly."""
    order = sorted(range(len(pairs)), key=lambda i: (-(len(pairs[i][0]) + len(pairs[i][1])), i))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in order:
        groups.setdefault(tuple(pairs[i][0]), []).append(i)
    direct: list[int] = []
    out: list[tuple[list[int], bool]] = []
    current: list[int] = []
    for ctx, members in groups.items():
        if not (share and worth_sharing(list(ctx), [pairs[i][1] for i in members])):
            direct.extend(members)
            continue
        for start in range(0, len(members), batch_size):
            part = members[start : start + batch_size]
            if current and len(current) + len(part) > batch_size:
                out.append((current, True))
                current = []
            current = current + part
    if current:
        out.append((current, True))
    rank = {i: r for r, i in enumerate(order)}
    direct.sort(key=rank.__getitem__)
    out += [(direct[i : i + batch_size], False) for i in range(0, len(direct), batch_size)]
    return out


def loglikelihoods(
    model,
    pairs: Sequence[Pair],
    depth: Depth,
    batch_size: int = 1,
    policy: CachePolicy | None = None,
    tally: Tally | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(logprob, is_greedy) of each pair's continuation given its context, at `depth`; see the
    module docstring. `advance(n)` is called as requests finish (progress)."""
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    share = depth.criterion is None
    for idx, shared in batches(pairs, batch_size, share):
        if shared:
            contexts: list[list[int]] = []
            where: dict[tuple[int, ...], int] = {}
            owner = []
            for i in idx:
                key = tuple(pairs[i][0])
                if key not in where:
                    where[key] = len(contexts)
                    contexts.append(list(pairs[i][0]))
                owner.append(where[key])
            got = score_shared(model, contexts, [pairs[i][1] for i in idx], owner, depth, policy, tally)
        else:
            got = score_direct(model, [pairs[i] for i in idx], depth, tally)
        for i, r in zip(idx, got, strict=True):
            results[i] = r
        if advance is not None:
            advance(len(idx))
    return [r for r in results if r is not None]
