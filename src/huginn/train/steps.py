"""Training depth: how many core iterations each optimizer step runs, and how many get gradients.

A `DepthSampler` answers `sample(step) -> (no_grad_steps, grad_steps)`. Draws are seeded by the step
number (and the run's seed) alone, so every rank, every micro-batch of a step and every resumed run
draws the same depth (no lockstep communication needed). Schemes:

* `poisson-lognormal` (Huginn's "poisson-lognormal-filling"): rate ~ LogNormal(mu, 0.5) with
  mu = ln(mean) - sigma^2/2 (so E[rate] = mean), p = Poisson(rate) + 1, grad steps k = min(backprop, p),
  no-grad steps n = p - k.
* `fixed`: p = mean every step, k = min(backprop, p).

A curriculum ramps the mean (and the backprop depth with it when the mean is smaller) from 0 to
`mean_recurrence` over the first `curriculum_fraction` of training, `linear` or `1-sqrt`
(f(t) = 1 - sqrt(1 - t)), ceil-ed to an integer >= 1, as in retrofitted recurrence
(McLeish et al. 2025). Non-goal: per-sample depths inside one batch (one depth per step keeps ranks
in lockstep and batches rectangular).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from huginn.errors import HuginnError, one_of

Scheme = Literal["poisson-lognormal", "fixed"]
Curriculum = Literal["none", "linear", "1-sqrt"]
SCHEMES: tuple[Scheme, ...] = get_args(Scheme)
CURRICULA: tuple[Curriculum, ...] = get_args(Curriculum)
SIGMA = 0.5
SEED_OFFSET = 514229  # the reference's seed offset for the depth generator (a Fibonacci prime)


@dataclass(frozen=True)
class DepthSampler:
    mean_recurrence: int
    backprop_depth: int
    scheme: Scheme = "poisson-lognormal"
    curriculum: Curriculum = "none"
    curriculum_fraction: float = 0.25
    max_steps: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise one_of("depth scheme", self.scheme, SCHEMES)
        if self.curriculum not in CURRICULA:
            raise one_of("depth curriculum", self.curriculum, CURRICULA)
        if self.mean_recurrence < 1:
            raise HuginnError(f"depth.mean_recurrence must be >= 1, got {self.mean_recurrence}")
        if self.backprop_depth < 1:
            raise HuginnError(f"depth.backprop_depth must be >= 1, got {self.backprop_depth}")
        if not 0 < self.curriculum_fraction <= 1:
            raise HuginnError(f"depth.curriculum_fraction must be in (0, 1], got {self.curriculum_fraction}")

    def mean_at(self, step: int) -> int:
        """The (curriculum-ramped) integer mean recurrence at optimizer step `step` (0-based)."""
        if self.curriculum == "none":
            return self.mean_recurrence
        ramp_steps = max(1, round(self.curriculum_fraction * self.max_steps))
        t = min(1.0, step / ramp_steps)
        f = t if self.curriculum == "linear" else 1.0 - math.sqrt(1.0 - t)
        # the 1e-9 keeps float noise (e.g. 3.0000000004) from adding a whole step
        return max(1, math.ceil(self.mean_recurrence * f - 1e-9))

    def backprop_at(self, step: int) -> int:
        """Backprop depth at `step`: clamped to the current mean, so short recurrences get full gradients."""
        return min(self.backprop_depth, self.mean_at(step))

    def sample(self, step: int) -> tuple[int, int]:
        """(no_grad_steps, grad_steps) for optimizer step `step`; a pure function of (seed, step)."""
        mean, s = self.mean_at(step), self.backprop_at(step)
        if self.scheme == "fixed":
            p = mean
        else:
            g = torch.Generator().manual_seed((SEED_OFFSET + self.seed * 1_000_003 + step) % (2**31 - 1))
            mu = math.log(mean) - SIGMA**2 / 2
            rate = torch.exp(torch.normal(mu, SIGMA, (1,), generator=g, dtype=torch.float64))
            p = int(torch.poisson(rate, generator=g).item()) + 1
        k = min(s, p)
        return p - k, k
