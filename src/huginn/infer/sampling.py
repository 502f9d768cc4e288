"""Choosing the next token from last-position logits: greedy or sampled, in the reference's order.

Order when sampling (as the published code): repetition penalty -> temperature -> softmax -> top-k
(zero below the k-th probability) -> top-p (drop the sorted tail whose cumulative sum exceeds p,
always keeping the top token) -> min-p (drop p < min_p * max p) -> renormalise -> multinomial.
Greedy is argmax (after the repetition penalty). Everything is vectorised over the batch.
Non-goals: beam search, DRY penalties, logits processors from transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from huginn.errors import HuginnError


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise HuginnError(f"{name} must be a non-negative number, got {v!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise HuginnError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.repetition_penalty == 0:
            raise HuginnError("repetition_penalty must be > 0 (1.0 turns it off)")

    @classmethod
    def from_generation_config(cls, gc) -> Sampling:
        return cls(
            do_sample=bool(gc.do_sample),
            temperature=gc.temperature,
            top_k=gc.top_k,
            top_p=gc.top_p,
            min_p=getattr(gc, "min_p", None),
            repetition_penalty=gc.repetition_penalty,
        )


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float, seen_mask: Tensor | None = None) -> Tensor:
    """Scale the logits of tokens in `seen` (B, T): negative ones times p, others divided by p."""
    picked = logits.gather(1, seen)
    penalised = torch.where(picked < 0, picked * penalty, picked / penalty)
    if seen_mask is not None:  # left padding is not "seen"
        penalised = torch.where(seen_mask, penalised, picked)
    return logits.scatter(1, seen, penalised)


def next_token(
    logits: Tensor,
    seen: Tensor,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    seen_mask: Tensor | None = None,
) -> Tensor:
    """(B,) next token ids from (B, V) fp32 logits; `seen` (B, T) are the ids so far."""
    if sampling.repetition_penalty is not None and sampling.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, sampling.repetition_penalty, seen_mask)
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    return torch.multinomial(filtered_probs(logits, sampling), 1, generator=generator).squeeze(-1)


def filtered_probs(logits: Tensor, sampling: Sampling) -> Tensor:
    """(B, V) the distribution sampling draws from: temperature, softmax, top-k, top-p, min-p, in
    that order, renormalised (the parallel sampler draws from it with each position's fixed noise)."""
    logits = logits.float()
    if sampling.temperature:
        logits = logits / sampling.temperature
    probs = F.softmax(logits, dim=-1)
    if sampling.top_k:
        kth = torch.topk(probs, min(sampling.top_k, probs.shape[-1]), dim=-1).values[:, -1:]
        probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        remove = sorted_probs.cumsum(dim=-1) > sampling.top_p
        remove[:, 0] = False
        probs = probs.masked_fill(remove.scatter(1, order, remove), 0.0)
    if sampling.min_p:
        probs = torch.where(probs < sampling.min_p * probs.amax(dim=-1, keepdim=True), torch.zeros_like(probs), probs)
    return probs / probs.sum(dim=-1, keepdim=True).clamp(min=1e-10)
