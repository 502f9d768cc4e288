"""Self-speculative decoding: the same model drafts cheaply at `draft_steps` core steps and
verifies at `num_steps`.

Each round drafts `lookahead` tokens one at a time (greedy, at draft depth), rolls the cache back,
and verifies [last token, drafts[:-1]] in one forward at full depth. A draft is accepted when it is
the verifier's argmax (or, with `verification_threshold` < 1, when its verifier probability is at
least threshold * the top probability). Rows of a batch accept the same number of tokens (the
smallest over unfinished rows); the token after the accepted ones is the verifier's own choice,
which for every row is exactly what greedy decoding at `num_steps` picks. So with threshold 1 the
output equals plain greedy decoding (up to float ties), whatever the drafts were.
Non-goals: sampling-based acceptance (rejection sampling), a separate draft model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from huginn.errors import HuginnError
from huginn.infer.generate import Depth, Generation, Stopping, check_length, is_stop, run_tokens
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache
from huginn.infer.sampling import Sampling


def speculative_generate(
    model,
    input_ids: Tensor,
    depth: Depth,
    stopping: Stopping,
    draft_steps: int,
    lookahead: int = 4,
    verification_threshold: float = 1.0,
    sampling: Sampling = Sampling(),
    attention_mask: Tensor | None = None,
    policy: CachePolicy | None = None,
    streamer=None,
) -> Generation:
    """Greedy generation at `depth.num_steps`, drafted at `draft_steps`; extras["acceptance_rate"]."""
    for name, count in (("draft_steps", draft_steps), ("lookahead_for_draft", lookahead)):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise HuginnError(f"{name} must be an integer >= 1, got {count!r}")
    if not isinstance(verification_threshold, (int, float)) or not verification_threshold > 0:
        raise HuginnError(f"verification_threshold must be a number in (0, 1], got {verification_threshold!r}")
    if sampling.do_sample or (sampling.repetition_penalty not in (None, 1.0)):
        raise HuginnError("speculative decoding is greedy only: set do_sample=False and no repetition_penalty")
    if depth.continuous:
        raise HuginnError("speculative decoding does not support continuous_compute")
    B, T = input_ids.shape
    max_new = stopping.max_new_tokens
    check_length(model, T, max_new)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    cache = HuginnStaticCache.for_model(model, B, depth.num_steps, T + max_new + lookahead, policy)
    full = Depth(depth.num_steps, init_scale=depth.init_scale)
    draft = Depth(draft_steps, init_scale=depth.init_scale)
    dev = input_ids.device

    def mask_upto(cols: int) -> Tensor | None:
        if attention_mask is None:
            return None
        return torch.cat([attention_mask, attention_mask.new_ones(B, cols - T)], dim=1)

    if streamer is not None:
        streamer.put(input_ids.cpu())
    res = run_tokens(model, input_ids, cache, full, attention_mask)
    x0: Tensor = res.logits.argmax(-1)
    new: list[Tensor] = [x0]
    drafted = accepted = 0
    while len(new) < max_new:
        L = min(lookahead, max_new - len(new))
        base = cache.get_seq_length()
        tok: Tensor = x0
        drafts: list[Tensor] = []
        for _ in range(L):
            r = run_tokens(model, tok[:, None], cache, draft, mask_upto(cache.get_seq_length() + 1))
            tok = r.logits.argmax(-1)
            drafts.append(tok)
        cache.crop(base)
        d = torch.stack(drafts, 1)  # (B, L)
        verify_in = torch.cat([x0[:, None], d[:, :-1]], dim=1)
        v: Tensor = run_tokens(model, verify_in, cache, full, mask_upto(base + L), all_logits=True).logits  # (B, L, V)
        vtok = v.argmax(-1)
        if verification_threshold >= 1:
            ok = vtok == d
        else:
            probs = torch.softmax(v, -1)
            ok = probs.gather(-1, d[..., None])[..., 0] >= verification_threshold * probs.amax(-1)
        lead = ok.long().cumprod(dim=1).sum(dim=1)  # (B,) leading accepted drafts per row
        a = int(lead.min())
        drafted += L * B
        accepted += int(lead.clamp(max=L).sum())
        if a < L:
            fresh = torch.cat([d[:, :a], vtok[:, a : a + 1]], dim=1)
            cache.crop(base + a + 1)
        else:
            fresh = d
        new.extend(fresh.unbind(1))
        x0 = fresh[:, -1]
    gen = torch.stack(new[:max_new], dim=1)
    # stops: everything after a row's first stop token becomes padding
    seqs = torch.cat([input_ids, gen], dim=1)
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    steps = torch.zeros_like(gen)
    for i in range(gen.shape[1]):
        gen[:, i] = torch.where(unfinished, gen[:, i], stopping.pad_token_id)
        steps[:, i] = torch.where(unfinished, depth.num_steps, 0)
        seqs = torch.cat([input_ids, gen[:, : i + 1]], dim=1)
        if streamer is not None:
            streamer.put(gen[:, i].cpu())
        unfinished = unfinished & ~is_stop(gen[:, i], seqs, stopping)
        if not bool(unfinished.any()):
            gen, steps = gen[:, : i + 1], steps[:, : i + 1]
            break
    if streamer is not None:
        streamer.end()
    seqs = torch.cat([input_ids, gen], dim=1)
    rate = accepted / drafted if drafted else 0.0
    return Generation(seqs, steps, cache, {"acceptance_rate": rate})
