"""The training forward: one module whose `forward` returns the loss, so DDP / FSDP2 can wrap it.

    e      = prelude(embed(x))
    s_0    = truncated-normal noise, seeded per row by its global row id (split-invariant)
    s      = core^n(s_0) under no_grad, then core^k with gradients (optionally checkpointed per step),
             through the one recurrence (`huginn.model.recurrence.recur`)
    loss   = chunked CE(head(ln_f(coda(ln_f(s)))), labels)

It calls the model's step-level pieces (`context`, `embed`, `initialize_state`, `core_step`) rather
than `model.forward`, because the memory-efficient loss needs the hidden state before the head.
Gradients reach the prelude and embedding only through the k grad steps' injections, as published.
Non-goals: sampling the depth (`steps.py`), choosing the optimizer.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from huginn.model.recurrence import Schedule, recur
from huginn.model.recurrent import RecurrentLM
from huginn.train.loss import linear_cross_entropy

ROW_SEED = 982451653  # offsets state-noise seeds away from other generators


def part(model: nn.Module, name: str) -> nn.Module:
    """`model.transformer[name]` (e.g. "adapter", "ln_f"), typed as a module."""
    return cast(nn.ModuleDict, model.transformer)[name]


def blocks(model: nn.Module, name: str) -> list[nn.Module]:
    """The blocks of `model.transformer[name]` ("prelude", "core_block", "coda") as a list."""
    return list(cast(nn.ModuleList, part(model, name)))


class TrainForward(nn.Module):
    def __init__(self, model: RecurrentLM, loss_chunk: int = 4096, checkpoint_core: bool = False, seed: int = 0):
        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk
        self.checkpoint_core = checkpoint_core
        self.seed = seed

    def initial_state(self, e: Tensor, row_ids: Tensor) -> Tensor:
        rows = []
        for i, rid in enumerate(row_ids.tolist()):
            g = torch.Generator(device=e.device).manual_seed((ROW_SEED + self.seed * 1_000_003 + rid) % (2**63 - 1))
            rows.append(self.model.initialize_state(e[i : i + 1], generator=g))
        return torch.cat(rows)

    def hidden(self, input_ids: Tensor, no_grad_steps: int, grad_steps: int, row_ids: Tensor) -> Tensor:
        """The coda's normalised output (B, S, d): what the head reads."""
        m = self.model
        ctx = m.context(*input_ids.shape)
        e = m.embed(input_ids, ctx)
        state = self.initial_state(e, row_ids)
        schedule = Schedule(no_grad_steps, grad_steps, checkpoint=self.checkpoint_core)
        state = recur(lambda s, step: m.core_step(s, e, ctx, step), state, schedule).state
        return m.readout(state, ctx)[0]

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor,
        no_grad_steps: int,
        grad_steps: int,
        row_ids: Tensor,
        denom: Tensor | None = None,
        answer_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """The loss (sum over labelled tokens / denom). With `answer_mask` (evaluation), also the
        number of masked positions whose argmax prediction equals the label and their summed loss."""
        h = self.hidden(input_ids, no_grad_steps, grad_steps, row_ids)
        loss = linear_cross_entropy(h, self.model.lm_head.weight, labels, self.loss_chunk, denom)
        if answer_mask is None:
            return loss
        at = h[answer_mask]  # (answers, d): only these rows need logits
        logits = (at @ self.model.lm_head.weight.to(at.dtype).T).float()
        target = labels[answer_mask]
        answer_loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        return loss, (logits.argmax(-1) == target).sum(), answer_loss
