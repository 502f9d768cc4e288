"""Exit criteria for adaptive per-token compute: when may one token stop iterating the core?

A criterion sees, after each checked step, the raw state (B, S, d) and, if it `uses_logits`, the
last position's logits (B, V) (the generation loop runs the coda and head only for those). It keeps
one value per batch row, so every row decides alone. Reductions follow the published code: logit
criteria look at the last position; latent criteria average over the sequence (in a prefill: over
the real, non-padded positions only). Thresholds default to the published "auto" values:

| criterion        | value compared                       | exit if  | auto  |
| entropy-diff     | |H_t - H_{t-1}|, H_{-1} = 100         | < thr    | 1e-3  |
| latent-diff      | ||s_t - s_{t-1}|| / ||s_t||          | < thr    | 0.03  |
| kl               | KL(p_{t-1} || p_t), p_{-1} uniform   | < thr    | 1e-3 (the paper uses 5e-4) |
| minp-kl          | the same after min-p (0.1) filtering | < thr    | 1e-5  |
| argmax-stability | consecutive checks with equal argmax | >= thr   | 5     |
| cosine           | 1 - cos(s_t, s_{t-1})                | < thr    | 1e-3  |
| none             | never exits                          |          |       |

Thresholds are checked by meaning: the distances and divergences take a number >= 0 (0: never
exits), argmax-stability a count >= 1, and `none` no number at all.

Any object with `uses_logits`, `reset(state, mask)` and `check(state, logits, mask) -> (B,) bool`
is a criterion (the `ExitCriterion` protocol). Non-goals: the stepping loop (`huginn.infer.generate`).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from huginn.errors import HuginnError, one_of


@runtime_checkable
class ExitCriterion(Protocol):
    uses_logits: bool

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        """A new token (or prefill) starts from `state` (B, S, d); `mask` (B, S) marks real positions."""

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        """(B,) bool: rows that may exit now."""


def _seq_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the sequence of (B, S) values, counting only real (unpadded) positions."""
    if mask is None:
        return values.mean(dim=-1)
    m = mask.to(values.dtype)
    return (values * m).sum(dim=-1) / m.sum(dim=-1)


class _Threshold:
    """A criterion that compares a distance or divergence (>= 0) with a threshold >= 0."""

    uses_logits = False
    auto: float = 0.0
    name = "criterion"

    def __init__(self, threshold: float | str | None = "auto"):
        if threshold == "auto" or threshold is None:
            threshold = self.auto
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise HuginnError(f"exit_threshold for {self.name} must be a number or 'auto', got {threshold!r}")
        self.threshold = float(threshold)
        self._check_range(threshold)

    def _check_range(self, threshold: float) -> None:
        if threshold < 0:
            raise HuginnError(
                f"exit_threshold for {self.name} must be >= 0 (it bounds a distance, which is never negative), "
                f"got {threshold:g}; e.g. {self.auto:g} (its 'auto' value)"
            )


class EntropyDiff(_Threshold):
    name, auto, uses_logits = "entropy-diff", 1e-3, True

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        self.prev = torch.full((state.shape[0],), 100.0, device=state.device)

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        assert logits is not None, "entropy-diff uses logits"
        probs = F.softmax(logits, dim=-1)
        entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=-1)
        value, self.prev = (entropy - self.prev).abs(), entropy
        return value < self.threshold


class LatentDiff(_Threshold):
    name, auto = "latent-diff", 0.03

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        self.prev = state

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        value = _seq_mean((state - self.prev).norm(dim=-1) / state.norm(dim=-1), mask)
        self.prev = state
        return value < self.threshold


class Cosine(_Threshold):
    name, auto = "cosine", 1e-3

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        self.prev = state

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        cos = (state * self.prev).sum(dim=-1) / state.norm(dim=-1) / self.prev.norm(dim=-1)
        self.prev = state
        return (1 - _seq_mean(cos, mask)) < self.threshold  # a zero previous state gives NaN: no exit


class KL(_Threshold):
    name, auto, uses_logits = "kl", 1e-3, True

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        self.prev: Tensor | None = None

    def _log_probs(self, logits: Tensor) -> Tensor:
        return F.log_softmax(logits, dim=-1)

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        assert logits is not None, f"{self.name} uses logits"
        log_probs = self._log_probs(logits)
        prev = self.prev if self.prev is not None else torch.full_like(log_probs, 1 / log_probs.shape[-1]).log()
        value = F.kl_div(log_probs, prev, reduction="none", log_target=True).sum(dim=-1)
        self.prev = log_probs
        return value < self.threshold


class MinPKL(KL):
    name, auto = "minp-kl", 1e-5

    def _log_probs(self, logits: Tensor) -> Tensor:
        probs = F.softmax(logits, dim=-1)
        low = probs < 0.1 * probs.amax(dim=-1, keepdim=True)
        probs = probs.masked_fill(low, 1 / probs.shape[-1])
        return (probs / probs.sum(dim=-1, keepdim=True)).log()


class ArgmaxStability(_Threshold):
    name, auto, uses_logits = "argmax-stability", 5, True

    def _check_range(self, threshold: float) -> None:
        if not float(threshold).is_integer() or threshold < 1:
            raise HuginnError(
                f"exit_threshold for argmax-stability is a count of consecutive steps with the same top token "
                f"(an integer >= 1), got {threshold:g}; e.g. {self.auto} (its 'auto' value)"
            )

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        self.prev = torch.full((state.shape[0],), -1, dtype=torch.long, device=state.device)
        self.stable = torch.zeros(state.shape[0], dtype=torch.long, device=state.device)

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        assert logits is not None, "argmax-stability uses logits"
        top = logits.argmax(dim=-1)
        self.stable = torch.where(top == self.prev, self.stable + 1, torch.zeros_like(self.stable))
        self.prev = top
        return self.stable >= self.threshold


class Never:
    name, uses_logits = "none", False

    def reset(self, state: Tensor, mask: Tensor | None) -> None:
        pass

    def check(self, state: Tensor, logits: Tensor | None, mask: Tensor | None) -> Tensor:
        return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)


CRITERIA: dict[str, type] = {c.name: c for c in (EntropyDiff, LatentDiff, KL, MinPKL, ArgmaxStability, Cosine, Never)}


def make_criterion(
    criterion: str | ExitCriterion | None, threshold: float | str | None = "auto"
) -> ExitCriterion | None:
    """A criterion object from a name (+ threshold), or the object itself; None/"none" -> None."""
    if criterion is None or criterion == "none":
        if threshold not in (None, "auto"):
            raise HuginnError(
                f"criterion 'none' never exits and takes no exit_threshold, got {threshold!r}; "
                "drop the threshold or choose a criterion (e.g. kl)"
            )
        return None
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise one_of("exit criterion", criterion, list(CRITERIA))
        return CRITERIA[criterion](threshold if threshold is not None else "auto")
    if not isinstance(criterion, ExitCriterion):
        raise HuginnError(
            f"criterion must be one of {', '.join(CRITERIA)} or an object with uses_logits, reset() and check(); "
            f"got {type(criterion).__name__}"
        )
    return criterion


def parse_exit(spec: str) -> tuple[str, float | str]:
    """'kl:5e-4' -> ('kl', 5e-4); 'latent-diff' -> ('latent-diff', 'auto') (the CLI's --exit)."""
    name, sep, value = spec.partition(":")
    if name not in CRITERIA:
        raise one_of("exit criterion", name, list(CRITERIA))
    if name == "none":
        if sep:
            raise HuginnError(f"exit criterion 'none' takes no threshold, got {spec!r}; write 'none' or e.g. 'kl:5e-4'")
        return name, "auto"
    if not value or value == "auto":
        return name, "auto"
    try:
        threshold = float(value)
    except ValueError:
        raise HuginnError(f"exit threshold {value!r} in {spec!r} is not a number; write e.g. 'kl:5e-4'") from None
    CRITERIA[name](threshold)  # its range, now (one line, before anything loads)
    return name, threshold
