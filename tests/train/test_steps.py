"""Depth sampler: statistics, truncation, determinism, curriculum."""

import itertools
import math

import pytest

from huginn.errors import HuginnError
from huginn.train.steps import DepthSampler


def test_poisson_lognormal_statistics_and_truncation():
    s = DepthSampler(mean_recurrence=8, backprop_depth=3, seed=1)
    draws = [s.sample(i) for i in range(4000)]
    totals = [n + k for n, k in draws]
    # p = Poisson(rate) + 1 with E[rate] = mean: E[p] = mean + 1
    assert abs(sum(totals) / len(totals) - 9.0) < 0.25
    assert all(k == min(3, n + k) for n, k in draws)
    assert all(n >= 0 and k >= 1 for n, k in draws)
    assert min(totals) == 1 and max(totals) > 20  # heavy right tail of the log-normal rate
    # the log-normal mixing makes the spread wider than a plain Poisson(mean)
    var = sum((t - 9.0) ** 2 for t in totals) / len(totals)
    assert var > 8 * 1.5


def test_draws_are_a_function_of_step_and_seed():
    a = DepthSampler(mean_recurrence=8, backprop_depth=4, seed=3)
    b = DepthSampler(mean_recurrence=8, backprop_depth=4, seed=3)
    assert [a.sample(i) for i in range(50)] == [b.sample(i) for i in reversed(range(50))][::-1]
    c = DepthSampler(mean_recurrence=8, backprop_depth=4, seed=4)
    assert [a.sample(i) for i in range(50)] != [c.sample(i) for i in range(50)]


def test_fixed_scheme():
    s = DepthSampler(mean_recurrence=6, backprop_depth=2, scheme="fixed")
    assert {s.sample(i) for i in range(10)} == {(4, 2)}
    s = DepthSampler(mean_recurrence=2, backprop_depth=4, scheme="fixed")
    assert s.sample(0) == (0, 2)


@pytest.mark.parametrize("kind", ["linear", "1-sqrt"])
def test_curriculum_ramps_mean_with_ceil(kind):
    s = DepthSampler(
        mean_recurrence=32, backprop_depth=8, curriculum=kind, curriculum_fraction=0.5, max_steps=200, scheme="fixed"
    )
    means = [s.mean_at(i) for i in range(200)]
    assert means[0] == 1 and means[100] == 32 and means[-1] == 32
    assert all(a <= b for a, b in itertools.pairwise(means))
    f = (lambda t: t) if kind == "linear" else (lambda t: 1 - math.sqrt(1 - t))
    assert means[30] == math.ceil(32 * f(0.3) - 1e-9)
    # backprop depth never exceeds the current mean, so early steps get full gradients
    assert s.sample(1) == (0, s.mean_at(1))
    assert s.sample(150) == (24, 8)
    if kind == "1-sqrt":
        assert s.mean_at(50) < DepthSampler(32, 8, curriculum="linear", curriculum_fraction=0.5, max_steps=200).mean_at(
            50
        )


def test_bad_values():
    with pytest.raises(HuginnError, match="valid: poisson-lognormal, fixed"):
        DepthSampler(4, 2, scheme="gauss")
    with pytest.raises(HuginnError, match="curriculum"):
        DepthSampler(4, 2, curriculum="cubic")
