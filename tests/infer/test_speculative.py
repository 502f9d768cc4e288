"""Self-speculative decoding gives exactly the greedy tokens at num_steps and reports acceptance."""

from __future__ import annotations

import pytest
import torch

from huginn.errors import HuginnError
from tests.infer.test_batching import _left_pad, _prompts


@pytest.mark.parametrize("draft_steps, lookahead", [(1, 4), (2, 3), (3, 1), (4, 8)])
def test_speculative_equals_greedy_on_the_fixture(reference_model, expected, draft_steps, lookahead):
    out = reference_model.generate(
        expected["input_ids"][:1, :10],
        max_new_tokens=12,
        num_steps=4,
        init_scale=0.0,
        draft_steps=draft_steps,
        lookahead_for_draft=lookahead,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, expected["generate_greedy_steps4"])
    assert 0.0 <= out.acceptance_rate <= 1.0
    if draft_steps == 4:
        assert out.acceptance_rate == 1.0  # drafting at full depth: every draft is the greedy token


def test_speculative_batch_with_padding_equals_greedy(reference_model, expected):
    ids, mask = _left_pad(_prompts(expected))
    kw = dict(max_new_tokens=10, num_steps=6, init_scale=0.0, attention_mask=mask, cache_lookup_strategy="compress-s8")
    greedy = reference_model.generate(ids, **kw)
    spec = reference_model.generate(ids, draft_steps=2, lookahead_for_draft=3, **kw)
    assert torch.equal(spec, greedy)


def test_speculative_stops_at_eos(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    greedy = reference_model.generate(prompt, max_new_tokens=12, num_steps=4, init_scale=0.0)
    eos = int(greedy[0, 14])
    kw = dict(max_new_tokens=12, num_steps=4, init_scale=0.0, eos_token_id=eos)
    assert torch.equal(reference_model.generate(prompt, draft_steps=1, **kw), reference_model.generate(prompt, **kw))


def test_speculative_rejects_sampling(reference_model, expected):
    with pytest.raises(HuginnError, match="greedy only"):
        reference_model.generate(expected["input_ids"][:1, :10], max_new_tokens=3, do_sample=True, draft_steps=1)


def test_speculative_batch_where_rows_stop_at_different_times_equals_greedy(reference_model, expected):
    """A row that stopped neither limits how many drafts the others accept nor changes their tokens."""
    ids, mask = _left_pad(_prompts(expected))
    kw = dict(max_new_tokens=10, num_steps=4, init_scale=0.0, attention_mask=mask)
    free = reference_model.generate(ids, **kw)
    eos = int(free[1, ids.shape[1] + 2])  # row 1 stops after its third token
    kw["eos_token_id"] = eos
    greedy = reference_model.generate(ids, return_dict_in_generate=True, **kw)
    spec = reference_model.generate(ids, draft_steps=1, lookahead_for_draft=3, return_dict_in_generate=True, **kw)
    assert torch.equal(spec.sequences, greedy.sequences) and torch.equal(spec.compute_steps, greedy.compute_steps)
    assert (spec.sequences[:, ids.shape[1] :] == eos).any(dim=1).tolist().count(True) >= 1
