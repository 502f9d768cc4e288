"""Interventions on the state during the recurrence: replace it, add to it (a steering vector), or
project directions out of it, at chosen (positions, steps).

An `Intervention` acts after core step t (1-based, as the recurrence's hook counts), on the state
that step produced; the next step continues from the changed state and a capture records the
changed state. Positions are absolute positions in the sequence (in a generation, the prompt's
positions then one per generated token); None means every position. `as_hook` turns a list into
a `recur` hook. Resuming from a captured state is not an intervention: pass the state as the
initial state (`capture(..., input_states=c.state_at(t))`). Non-goals: learning directions (use
`huginn.analysis.metrics` or your own probe), interventions inside a core step (between layers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from huginn.errors import HuginnError, one_of
from huginn.model.recurrence import StepHook

Kind = Literal["replace", "add", "project_out"]
KINDS: tuple[Kind, ...] = get_args(Kind)


@dataclass(frozen=True, eq=False)  # tensors do not compare as booleans
class Intervention:
    """`kind` at `steps` and `positions` (see the module docstring). `value`:
    replace: the new state, (d,) for every chosen position, or (B or 1, P, d) for the P chosen
    positions (P = the sequence length when `positions` is None); add: a steering vector of the
    same shapes; project_out: one direction (d,) or several (k, d) (orthonormalised here)."""

    kind: Kind
    value: Tensor
    steps: tuple[int, ...]
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise one_of("intervention kind", self.kind, KINDS)
        if not self.steps or any(not isinstance(t, int) or t < 1 for t in self.steps):
            raise HuginnError(f"intervention steps must be core steps >= 1 (1-based), got {self.steps!r}")
        if self.positions is not None and any(not isinstance(p, int) or p < 0 for p in self.positions):
            raise HuginnError(f"intervention positions must be integers >= 0, got {self.positions!r}")
        if self.kind == "project_out":
            basis = self.value.reshape(-1, self.value.shape[-1]).double()
            q, _ = torch.linalg.qr(basis.T)  # (d, k) orthonormal columns spanning the directions
            object.__setattr__(self, "_basis", q.T.contiguous())

    def apply(self, step: int, state: Tensor, offset: int = 0) -> Tensor | None:
        """The state (B, S, d) after this intervention at core step `step`, where the state's
        positions are `offset .. offset + S - 1` of the sequence; None where it does not act."""
        if step not in self.steps:
            return None
        S = state.shape[1]
        if self.positions is None:
            local = list(range(S))
            picks = [p + offset for p in local]  # which entries of a per-position value apply
        else:
            picks = [p for p in self.positions if offset <= p < offset + S]
            local = [p - offset for p in picks]
        if not local:
            return None
        index = torch.tensor(local, device=state.device)
        rows = state[:, index]  # (B, P, d)
        if self.kind == "project_out":
            basis = self._basis.to(device=state.device)  # type: ignore[attr-defined]
            coords = rows.double() @ basis.T  # (B, P, k)
            new = (rows.double() - coords @ basis).to(state.dtype)
        else:
            value = self._value_for(picks, offset, state)
            new = value.expand_as(rows) if self.kind == "replace" else rows + value
        out = state.clone()
        out[:, index] = new.to(state.dtype)
        return out

    def _value_for(self, picks: list[int], offset: int, state: Tensor) -> Tensor:
        value = self.value.to(device=state.device, dtype=state.dtype)
        if value.dim() == 1:
            return value
        order = list(self.positions) if self.positions is not None else None
        idx = [order.index(p) for p in picks] if order is not None else picks
        if max(idx) >= value.shape[-2]:
            raise HuginnError(
                f"intervention value has {value.shape[-2]} positions but position {picks[-1]} was asked for; "
                "pass one row per chosen position"
            )
        return value[..., idx, :]


def replace(value: Tensor, steps: Iterable[int], positions: Sequence[int] | None = None) -> Intervention:
    """Set the state to `value` after each of `steps` at `positions`."""
    return Intervention("replace", value, tuple(steps), None if positions is None else tuple(positions))


def add(vector: Tensor, steps: Iterable[int], positions: Sequence[int] | None = None) -> Intervention:
    """Add the steering `vector` to the state after each of `steps` at `positions`."""
    return Intervention("add", vector, tuple(steps), None if positions is None else tuple(positions))


def project_out(directions: Tensor, steps: Iterable[int], positions: Sequence[int] | None = None) -> Intervention:
    """Remove the state's component along `directions` (d,) or (k, d) after each of `steps`."""
    return Intervention("project_out", directions, tuple(steps), None if positions is None else tuple(positions))


def apply_all(interventions: Sequence[Intervention], step: int, state: Tensor, offset: int = 0) -> Tensor | None:
    """The state after every intervention acting at `step`, in order; None when none acts."""
    changed = None
    for iv in interventions:
        new = iv.apply(step, state if changed is None else changed, offset)
        if new is not None:
            changed = new
    return changed


def as_hook(interventions: Sequence[Intervention]) -> StepHook:
    """A `recur` hook applying `interventions` to a forward over positions 0 .. S-1."""

    def hook(step: int, state: Tensor, previous: Tensor) -> tuple[Tensor, bool] | None:
        new = apply_all(interventions, step, state)
        return None if new is None else (new, False)

    return hook
