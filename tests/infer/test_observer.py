"""Generation's observer hook (`generate(..., observer=)`): the seam capture and interventions use.
An observer that changes nothing leaves tokens and steps exact; it sees every core step of every
forward, after exits froze their rows; a state it returns is the one the recurrence continues from."""

from __future__ import annotations

import pytest
import torch

from huginn.infer.exits import make_criterion
from huginn.infer.generate import Depth, Stopping, generate

NEW = 5


def _prompts(expected):
    ids = expected["input_ids"]
    prompt = [ids[0, 14:], ids[1, 18:]]
    mask = torch.zeros(2, 10, dtype=torch.long)
    batch = torch.zeros(2, 10, dtype=torch.long)
    for i, p in enumerate(prompt):
        batch[i, 10 - len(p) :] = p
        mask[i, 10 - len(p) :] = 1
    return batch, mask


DEPTHS = {
    "fixed": lambda: Depth(4, init_scale=0.0),
    "exits": lambda: Depth(12, make_criterion("latent-diff", 0.05), init_scale=0.0),
}


@pytest.mark.parametrize("name", DEPTHS)
def test_an_observer_that_changes_nothing_changes_nothing(reference_model, expected, name):
    ids, mask = _prompts(expected)
    plain = generate(reference_model, ids, DEPTHS[name](), Stopping(NEW), attention_mask=mask)
    calls: list[tuple[int, torch.Tensor]] = []

    def observe(step, state, previous):
        calls.append((step, state.clone()))

    seen = generate(reference_model, ids, DEPTHS[name](), Stopping(NEW), attention_mask=mask, observer=observe)
    assert torch.equal(plain.sequences, seen.sequences)
    assert torch.equal(plain.compute_steps, seen.compute_steps)
    # one call per core step run: each forward runs as many steps as its deepest row
    starts = [i for i, (step, _) in enumerate(calls) if step == 1]
    assert len(starts) == plain.compute_steps.shape[1]
    ends = [*starts[1:], len(calls)]
    for t, (a, b) in enumerate(zip(starts, ends)):
        assert b - a == int(plain.compute_steps[:, t].max())


def test_rows_that_exited_are_frozen_before_the_observer_sees_them(reference_model, expected):
    ids, mask = _prompts(expected)
    depth = Depth(12, make_criterion("latent-diff", 0.05), init_scale=0.0)
    states: list[list[torch.Tensor]] = []

    def observe(step, state, previous):
        if step == 1:
            states.append([])
        states[-1].append(state[:, -1].clone())

    out = generate(reference_model, ids, depth, Stopping(NEW), attention_mask=mask, observer=observe)
    for t, per_step in enumerate(states):
        for row in range(2):
            k = int(out.compute_steps[row, t])
            if k == 0:
                continue
            for later in per_step[k:]:  # after its exit a row's state no longer moves
                assert torch.equal(later[row], per_step[k - 1][row])


def test_a_state_the_observer_returns_is_continued_from(reference_model, expected):
    ids = expected["input_ids"][:1, :8]
    depth = Depth(4, init_scale=0.0)
    base = generate(reference_model, ids, depth, Stopping(3))

    def zero_at_two(step, state, previous):
        return (torch.zeros_like(state), False) if step == 2 else None

    steered = generate(reference_model, ids, depth, Stopping(3), observer=zero_at_two)
    # resetting the state to zero after step 2 of 4 makes steps 3-4 those of a 2-step run from zero
    short = generate(reference_model, ids, Depth(2, init_scale=0.0), Stopping(3))
    assert not torch.equal(base.sequences, short.sequences)  # so ignoring the returned state would show
    assert torch.equal(steered.sequences, short.sequences)
