"""The one recurrence: iterate the core from a state, `s_i = core(inject(s_{i-1}, e))`.

Every path that iterates the core calls `recur`: the model's forward, the training forward,
eager generation (with exits) and compiled decoding (inside its graph). What differs between them
is passed in, never written into a copy of the loop:

- `Schedule`: how many steps run without gradients, how many with, and whether each gradient step
  is activation-checkpointed (truncated backprop and memory, for training);
- `limit`: per-row (B,) or per-position (B, S) step counts; a row or position whose count is reached
  keeps its state while the others iterate on (rows that exited);
- `hook(step, state, previous)`: called after every step (1-based count) with the new and the
  previous state; it may return `(state, stop)` to replace the state (freeze rows, intervene) and to
  end the recurrence early (adaptive exits), or None to change nothing. Capture, interventions
  and exit criteria attach here.

With neither a hook nor a limit the loop is the plain `for` over `step_fn`, which is what a
compiled graph traces. Non-goals: choosing the depth (callers pass it), caches (the step function
carries them through its attention context).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

StepFn = Callable[[Tensor, int], Tensor]  # (state, step index from 0) -> new state
StepHook = Callable[[int, Tensor, Tensor], "tuple[Tensor, bool] | None"]


@dataclass(frozen=True)
class Schedule:
    """`no_grad_steps` then `grad_steps` core steps; `checkpoint`: recompute each gradient step's
    activations in the backward instead of storing them."""

    no_grad_steps: int = 0
    grad_steps: int = 1
    checkpoint: bool = False

    @property
    def total(self) -> int:
        return self.no_grad_steps + self.grad_steps

    @classmethod
    def plain(cls, num_steps: int) -> Schedule:
        """`num_steps` steps, gradients as the surrounding context has them."""
        return cls(0, num_steps)


@dataclass
class Recurrence:
    state: Tensor  # the final state
    steps: int  # core steps run (fewer than scheduled when a hook stopped early)


def recur(
    step_fn: StepFn,
    state: Tensor,
    schedule: Schedule,
    *,
    hook: StepHook | None = None,
    limit: Tensor | None = None,
) -> Recurrence:
    """Run `schedule.total` core steps of `step_fn` from `state` (see the module docstring)."""
    if hook is None and limit is None and not schedule.checkpoint and schedule.no_grad_steps == 0:
        for step in range(schedule.grad_steps):  # the plain path: what compiled graphs trace
            state = step_fn(state, step)
        return Recurrence(state, schedule.grad_steps)
    total = schedule.total
    if limit is not None:
        total = min(total, int(limit.max()))
    for step in range(total):
        previous = state
        with torch.no_grad() if step < schedule.no_grad_steps else nullcontext():
            if schedule.checkpoint and step >= schedule.no_grad_steps and torch.is_grad_enabled():
                state = checkpoint(step_fn, state, step, use_reentrant=False)
            else:
                state = step_fn(state, step)
        if limit is not None:
            keep = limit > step  # (B,) or (B, S): rows / positions still iterating
            state = torch.where(keep.reshape(*keep.shape, *[1] * (state.dim() - keep.dim())), state, previous)
        if hook is not None:
            action = hook(step + 1, state, previous)
            if action is not None:
                state, stop = action
                if stop:
                    return Recurrence(state, step + 1)
    return Recurrence(state, total)
