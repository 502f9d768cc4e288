"""Metrics on constructed dynamics with known answers: a contracting map (fixed point, known
convergence step), a rotation (orbit, known period), a translation (slider), a random walk (not
converged); the loop-counter probe finds a step index written into states and is at chance without."""

from __future__ import annotations

import math

import pytest
import torch

from huginn.analysis import metrics
from huginn.errors import HuginnError

D, T = 24, 64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def contracting(rate: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """s_t = c + rate^t (s_0 - c), t = 1 .. T: (states, c, s_0)."""
    g = _gen(seed)
    s0, c = torch.randn(D, generator=g, dtype=torch.float64), 3 * torch.randn(D, generator=g, dtype=torch.float64)
    return torch.stack([c + rate**t * (s0 - c) for t in range(1, T + 1)]), c, s0


def rotation(period: int, seed: int = 0) -> torch.Tensor:
    """s_t = c + R^t (s_0 - c), R a rotation by 2 pi / period in a random plane (plus a fixed part)."""
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    c, s0 = 5 * torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    out = []
    for t in range(1, T + 1):
        a = 2 * math.pi * t / period
        rot = torch.eye(D, dtype=torch.float64)
        rot[0, 0] = rot[1, 1] = math.cos(a)
        rot[0, 1], rot[1, 0] = -math.sin(a), math.sin(a)
        out.append(c + q @ rot @ q.T @ (s0 - c))
    return torch.stack(out)


def translation(seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    s0, u = torch.randn(D, generator=g, dtype=torch.float64), 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
    return torch.stack([s0 + t * u for t in range(1, T + 1)])


def random_walk(seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    return 10 * torch.randn(D, generator=g, dtype=torch.float64) + torch.randn(T, D, generator=g).double().cumsum(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_kind_of_dynamics_is_classified(seed):
    got = metrics.classify(
        torch.stack([contracting(0.7, seed)[0], rotation(7, seed), translation(seed), random_walk(seed)])
    )
    assert [c.kind for c in got] == ["fixed point", "orbit", "slider", "not converged"]


@pytest.mark.parametrize("period", [2, 5, 9])
def test_an_orbit_has_its_period(period):
    (c,) = metrics.classify(rotation(period))
    assert c.kind == "orbit" and c.period == period


def test_leading_dimensions_are_kept_in_order():
    batch = torch.stack([torch.stack([translation(), rotation(6)]), torch.stack([random_walk(), contracting(0.5)[0]])])
    kinds = [c.kind for c in metrics.classify(batch)]
    assert kinds == ["slider", "orbit", "not converged", "fixed point"]


@pytest.mark.parametrize("rate, threshold", [(0.5, 1e-4), (0.8, 1e-3), (0.9, 1e-2)])
def test_steps_to_convergence_of_a_contracting_map(rate, threshold):
    states, c, s0 = contracting(rate)
    # ||s_t - s_{t-1}|| = rate^(t-1) (1 - rate) ||s_0 - c||: below the threshold from the first t with that
    delta = float((s0 - c).norm()) * (1 - rate)
    expected = next(t for t in range(2, T + 1) if rate ** (t - 1) * delta < threshold)
    got = metrics.steps_to_convergence(states, threshold, relative=False)
    assert int(got) == expected
    # with the initial state leading, the same step numbers
    with_initial = torch.cat([s0[None], states])
    assert int(metrics.steps_to_convergence(with_initial, threshold, relative=False, first_step=0)) == expected


def test_steps_to_convergence_needs_staying_below():
    # a trajectory that dips below the threshold once and moves again is not converged then
    steps = torch.tensor([[0.0], [1.0], [1.001], [2.0], [2.0], [2.0]]).double()
    assert int(metrics.steps_to_convergence(steps, 0.01, relative=False)) == 5
    assert int(metrics.steps_to_convergence(random_walk(), 1e-3)) == -1
    with pytest.raises(HuginnError, match="threshold"):
        metrics.steps_to_convergence(steps, 0.0)


def test_distances_and_kl_are_what_they_say():
    s = torch.randn(3, 5, D, generator=_gen(0))
    dist = metrics.successive_distance(s)
    assert torch.allclose(dist[1, 2], (s[1, 3] - s[1, 2]).double().norm())
    rel = metrics.successive_distance(s, relative=True)
    assert torch.allclose(rel[2, 0], (s[2, 1] - s[2, 0]).double().norm() / s[2, 1].double().norm())
    to_final = metrics.distance_to_final(s)
    assert to_final.shape == (3, 5) and float(to_final[:, -1].abs().max()) == 0
    assert torch.allclose(to_final[0, 1], (s[0, 1] - s[0, 4]).double().norm())
    logits = torch.randn(2, 4, 10, generator=_gen(1))
    kl = metrics.successive_kl(logits)
    p, q = logits[1, 2].double().softmax(-1), logits[1, 1].double().softmax(-1)
    assert torch.allclose(kl[1, 1], (p * (p / q).log()).sum())
    assert float(metrics.successive_kl(logits[:, :1].expand(2, 3, 10)).abs().max()) == 0


def test_pca_of_a_planar_orbit_is_two_dimensional():
    pca = metrics.trajectory_pca(rotation(8), components=4)
    assert float(pca.explained[:2].sum()) > 1 - 1e-9
    assert torch.allclose(
        pca.projections[:, :2].norm(dim=-1), pca.projections[:1, :2].norm(dim=-1).expand(T, 1).squeeze(-1)
    )
    tail = metrics.trajectory_pca(translation(), components=2, tail=10)
    assert tail.projections.shape == (10, 2) and float(tail.explained[0]) > 1 - 1e-9


def test_the_probe_reads_a_step_index_written_into_the_state():
    P, N = 40, 8
    g = _gen(0)
    codes = torch.randn(N, D, generator=g)  # a direction per step
    noise = torch.randn(P, N, D, generator=g)
    found = metrics.step_probe(noise + codes)
    blind = metrics.step_probe(noise)
    assert found.chance == blind.chance == 1 / N
    assert found.accuracy > 0.8
    assert blind.accuracy < blind.chance + 0.1
    assert found.train_positions + found.test_positions == P


def test_the_probe_reads_a_counter_along_one_direction():
    P, N = 30, 6
    g = _gen(1)
    u = torch.randn(D, generator=g)
    counter = torch.arange(N, dtype=torch.float32)[None, :, None] * u  # a loop counter along u
    states = torch.randn(P, N, D, generator=g) + 3 * counter
    assert metrics.step_probe(states).mean_abs_error < 0.5


def test_bad_inputs_are_one_line():
    with pytest.raises(HuginnError, match="at least 3"):
        metrics.classify(torch.zeros(2, D))
    with pytest.raises(HuginnError, match="positions, steps, width"):
        metrics.step_probe(torch.zeros(4, D))
    with pytest.raises(HuginnError, match="train_fraction"):
        metrics.step_probe(torch.zeros(4, 3, D), train_fraction=1.0)
