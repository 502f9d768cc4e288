"""The one recurrence (`huginn.model.recurrence.recur`): hooks and limits change nothing they should
not, and every caller computes what the plain loop computes."""

from __future__ import annotations

import torch

from huginn import RecurrentLM, named_shape
from huginn.model.recurrence import Schedule, recur


def _model(seed: int = 0) -> RecurrentLM:
    torch.manual_seed(seed)
    return RecurrentLM(named_shape("tiny")).eval()


def _pieces(m: RecurrentLM, ids: torch.Tensor):
    ctx = m.context(*ids.shape)
    e = m.embed(ids, ctx)
    return ctx, e, m.initialize_state(e, 1.0, torch.Generator().manual_seed(3))


def test_a_hook_that_does_nothing_equals_the_plain_path():
    m = _model()
    ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        ctx, e, s0 = _pieces(m, ids)
        plain = m.recur(s0, e, ctx, Schedule.plain(5))
        calls: list[int] = []
        hooked = m.recur(s0, e, ctx, Schedule.plain(5), hook=lambda step, new, old: calls.append(step))
    assert torch.equal(plain.state, hooked.state) and plain.steps == hooked.steps == 5
    assert calls == [1, 2, 3, 4, 5]


def test_a_recording_hook_sees_the_states_of_return_states():
    m = _model(1)
    ids = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        out = m(ids, 4, init_scale=0.0, return_states=True)
        ctx, e, _ = _pieces(m, ids)
        seen: list[torch.Tensor] = []
        m.recur(torch.zeros_like(e), e, ctx, Schedule.plain(4), hook=lambda step, new, old: seen.append(new))
    assert out.states is not None and len(out.states) == len(seen) == 4
    for a, b in zip(out.states, seen):
        assert torch.equal(a, b)
    assert torch.equal(out.state, seen[-1])


def test_a_hook_can_stop_and_replace_the_state():
    m = _model(2)
    ids = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        ctx, e, s0 = _pieces(m, ids)
        two = m.recur(s0, e, ctx, Schedule.plain(2)).state
        stopped = m.recur(s0, e, ctx, Schedule.plain(9), hook=lambda step, new, old: (new, step == 2))
        zeroed = m.recur(s0, e, ctx, Schedule.plain(3), hook=lambda step, new, old: (new * 0, False))
    assert stopped.steps == 2 and torch.equal(stopped.state, two)
    assert torch.equal(zeroed.state, torch.zeros_like(s0))


def test_per_row_and_per_position_limits_freeze_what_is_done():
    m = _model(3)
    ids = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        ctx, e, s0 = _pieces(m, ids)
        by_depth = {n: m.recur(s0, e, ctx, Schedule.plain(n)).state for n in (1, 2, 3)}
        rows = m.recur(s0, e, ctx, Schedule.plain(9), limit=torch.tensor([3, 1])).state
        positions = m.recur(s0, e, ctx, Schedule.plain(9), limit=torch.tensor([[1, 2, 3, 3, 3]] * 2)).state
    assert torch.equal(rows[0], by_depth[3][0]) and torch.equal(rows[1], by_depth[1][1])
    # a position stops where its own count ends; the later positions attend to its frozen state's
    # keys only through the cache, so without one each position is its own recurrence
    assert torch.equal(positions[:, 0], by_depth[1][:, 0])


def test_schedule_splits_gradients_and_checkpoints_the_same_values():
    m = _model(4)
    ids = torch.randint(0, 256, (1, 4))
    ctx, e, s0 = _pieces(m, ids)
    a = m.recur(s0, e, ctx, Schedule(2, 2)).state
    b = m.recur(s0, e, ctx, Schedule(2, 2, checkpoint=True)).state
    c = recur(lambda s, step: m.core_step(s, e, ctx, step), s0, Schedule.plain(4)).state
    assert torch.equal(a, b) and torch.equal(a, c) and a.requires_grad
