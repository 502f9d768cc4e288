"""Batched == solo: every row of a left-padded batch gets exactly what it gets alone (tokens, step
counts, KV entries), at fixed depth and with per-row adaptive exits."""

from __future__ import annotations

import pytest
import torch

from huginn.infer.exits import make_criterion
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy

LENGTHS = (10, 6, 8)
NEW = 6


def _prompts(expected):
    ids = expected["input_ids"]
    return [ids[i % 2, 24 - n :] for i, n in enumerate(LENGTHS)]


def _left_pad(prompts, pad=0):
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = p
        mask[i, T - len(p) :] = 1
    return ids, mask


def _run(model, ids, mask, depth, policy):
    return generate(model, ids, depth, Stopping(NEW), attention_mask=mask, policy=policy)


CASES = [
    ("fixed", lambda: Depth(4, init_scale=0.0), "latest-m4"),
    ("continuous", lambda: Depth(4, continuous=True, init_scale=0.0), "compress-s8"),
    ("kl", lambda: Depth(12, make_criterion("kl", 1e-3), init_scale=0.0), "latest-m4"),
    ("latent-diff", lambda: Depth(12, make_criterion("latent-diff", 0.05), init_scale=0.0), "latest-m4"),
    ("cosine-skip", lambda: Depth(12, make_criterion("cosine", 2e-3), init_scale=0.0), "skip"),
    (
        "argmax-s8",
        lambda: Depth(12, make_criterion("argmax-stability", 3), min_steps=1, check_every=2, init_scale=0.0),
        "latest-m4-compress-s8",
    ),
]


@pytest.mark.parametrize("name, make_depth, strategy", CASES, ids=[c[0] for c in CASES])
def test_left_padded_batch_equals_solo_runs(reference_model, expected, name, make_depth, strategy):
    model = reference_model
    policy = CachePolicy.parse(strategy)
    prompts = _prompts(expected)
    ids, mask = _left_pad(prompts)
    batch = _run(model, ids, mask, make_depth(), policy)
    T = ids.shape[1]
    steps_seen = set()
    for i, p in enumerate(prompts):
        solo = _run(model, p[None], None, make_depth(), policy)
        assert torch.equal(batch.sequences[i, T - len(p) :], solo.sequences[0]), f"row {i} tokens differ"
        assert torch.equal(batch.compute_steps[i], solo.compute_steps[0]), f"row {i} step counts differ"
        steps_seen.update(solo.compute_steps[0].tolist())
        pad = T - len(p)
        cb, cs = batch.cache, solo.cache
        assert torch.equal(cb.token_steps()[i, pad:], cs.token_steps()[0])
        # every stored entry of the row's real tokens (the last token is never fed back)
        n = cs.get_seq_length()
        for s in range(cs.k.shape[0]):
            torch.testing.assert_close(cb.k[s, i, :, pad : pad + n], cs.k[s, 0, :, :n], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(cb.v[s, i, :, pad : pad + n], cs.v[s, 0, :, :n], atol=2e-5, rtol=1e-4)
    if name not in ("fixed", "continuous"):
        assert len(steps_seen) > 2, "the adaptive case should exercise different exits per token"


def test_batch_rows_exit_on_their_own(reference_model, expected):
    """In one batch, rows take different step counts for the same token index."""
    ids, mask = _left_pad(_prompts(expected))
    out = _run(reference_model, ids, mask, Depth(16, make_criterion("kl", 1e-3), init_scale=0.0), CachePolicy())
    assert any(len(set(col.tolist())) > 1 for col in out.compute_steps.T)
