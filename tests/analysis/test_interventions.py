"""Interventions: adding zero changes nothing; replacing the state at step t with another run's makes
the rest of the trajectory that run's; steering and projecting act exactly where asked; resuming
from a captured state equals the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from huginn.analysis import Selection, add, capture, capture_generation, project_out, replace
from huginn.errors import HuginnError
from huginn.infer.generate import Depth, Stopping, generate
from tests.conftest import tiny_model

STEPS = 8


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))


def _run(model, ids, seed=0, **kw):
    return capture(model, ids, STEPS, generator=torch.Generator().manual_seed(seed), **kw)


def test_adding_zero_changes_nothing(model, ids):
    base = _run(model, ids)
    zero = _run(model, ids, interventions=[add(torch.zeros(64), steps=range(1, STEPS + 1))])
    assert torch.equal(zero.states, base.states)
    assert torch.equal(zero.logits, base.logits)


@pytest.mark.parametrize("t", [1, 3, 7])
def test_setting_the_state_to_another_runs_makes_the_rest_that_run(model, ids, t):
    a, b = _run(model, ids, seed=0), _run(model, ids, seed=1)
    assert not torch.equal(a.states[:, :, -1], b.states[:, :, -1])  # the two runs differ
    swapped = _run(model, ids, seed=0, interventions=[replace(b.state_at(t), steps=[t])])
    assert torch.equal(swapped.states[:, :, : t - 1], a.states[:, :, : t - 1])
    assert torch.equal(swapped.states[:, :, t - 1 :], b.states[:, :, t - 1 :])
    assert torch.equal(swapped.logits, b.logits)


def test_steering_and_projecting_act_at_the_chosen_positions_and_steps(model, ids):
    base = _run(model, ids)
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))

    steered = _run(model, ids, interventions=[add(v, steps=[4], positions=[2, 5])])
    assert torch.equal(steered.states[:, :, :3], base.states[:, :, :3])
    assert torch.allclose(steered.states[:, [2, 5], 3], base.states[:, [2, 5], 3] + v)
    others = [p for p in range(9) if p not in (2, 5)]
    assert torch.equal(steered.states[:, others, 3], base.states[:, others, 3])
    assert not torch.allclose(steered.states[:, :, 4], base.states[:, :, 4])  # later steps feel it

    u = torch.randn(2, 64, generator=torch.Generator().manual_seed(4))
    cut = _run(model, ids, interventions=[project_out(u, steps=[5])])
    assert float((cut.states[:, :, 4] @ u.T).abs().max()) < 1e-4  # no component left along u
    assert float((base.states[:, :, 4] @ u.T).abs().max()) > 1e-2


def test_resuming_from_a_captured_state_equals_the_uninterrupted_run(model, ids):
    whole = _run(model, ids)
    for t in (0, 3, STEPS - 1):
        rest = capture(model, ids, STEPS - t, input_states=whole.state_at(t))
        assert torch.equal(rest.states, whole.states[:, :, t:])
        assert torch.equal(rest.logits, whole.logits)
    part = _run(model, ids, select=Selection(positions=[0, 1]))
    with pytest.raises(HuginnError, match="every position"):
        part.state_at(2)


def test_interventions_during_generation(reference_model, expected):
    ids = expected["input_ids"][:1, -6:]
    depth = Depth(4, init_scale=0.0)
    plain = generate(reference_model, ids, depth, Stopping(4))
    zero = capture_generation(reference_model, ids, depth, Stopping(4), interventions=[add(torch.zeros(64), steps=[2])])
    assert torch.equal(zero.sequences, plain.sequences)
    # positions are absolute: position 7 is the second new token's forward (prompt of 6)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 10
    base = capture_generation(reference_model, ids, depth, Stopping(4))
    steered = capture_generation(
        reference_model, ids, depth, Stopping(4), interventions=[add(v, steps=[2], positions=[7])]
    )
    for f in (0, 1):
        assert torch.equal(steered.forwards[f], base.forwards[f])
    assert torch.allclose(steered.forwards[2][:, 0, 1], base.forwards[2][:, 0, 1] + v)


def test_bad_interventions_are_one_line():
    with pytest.raises(HuginnError, match="steps"):
        add(torch.zeros(4), steps=[0])
    with pytest.raises(HuginnError, match="positions"):
        add(torch.zeros(4), steps=[1], positions=[-1])
    with pytest.raises(HuginnError, match="kind"):
        from huginn.analysis import Intervention

        Intervention("scale", torch.zeros(4), (1,))
