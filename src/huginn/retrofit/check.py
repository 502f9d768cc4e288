"""Exactness check: a converted model at num_steps=1 is its base with only the mapped layers.

With an identity injection (the core sees exactly the prelude output) one recurrent step runs the
mapped base layers in order, prelude -> core -> coda, then the final norm and the head. So the
converted model's logits must equal those of the base whose layer list is cut down to the map
(for a map that keeps every layer in order: the base itself). A `linear` adapter is set to
[0 | I] for the duration of the check and restored; an `add` injection runs from a zero state.
This checks the weight mapping, the RoPE permutation and the block/norm options in one number.
Non-goal: quality after dropping layers (that is what continued training is for).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from huginn.retrofit.layer_map import LayerMap


@dataclass(frozen=True)
class CheckResult:
    max_abs_diff: float  # over every logit of every token
    max_abs_logit: float  # scale of the logits, for reading the difference
    n_tokens: int

    def ok(self, atol: float = 1e-4, rtol: float = 1e-5) -> bool:
        """Within fp32 round-off: |diff| <= max(atol, rtol * largest |logit|). Mapping mistakes
        (a wrong permutation, a swapped norm) are off by O(1), far outside either bound."""
        return self.max_abs_diff <= max(atol, rtol * self.max_abs_logit)


@contextmanager
def base_with_layers(base: Any, layers: tuple[int, ...]) -> Iterator[Any]:
    """The base model with its decoder layer list temporarily cut to `layers` (in that order)."""
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    original = decoder.layers
    decoder.layers = nn.ModuleList([original[i] for i in layers])
    try:
        yield base
    finally:
        decoder.layers = original


@contextmanager
def identity_injection(model: Any) -> Iterator[Any]:
    """The model with a [0 | I] adapter (when it has one), restored afterwards."""
    adapter = getattr(model.transformer, "adapter", None)
    if adapter is None:
        yield model
        return
    saved = adapter.weight.detach().clone()
    d = adapter.weight.shape[0]
    with torch.no_grad():
        adapter.weight.zero_()
        adapter.weight[:, d:].copy_(torch.eye(d, dtype=saved.dtype, device=saved.device))
    try:
        yield model
    finally:
        with torch.no_grad():
            adapter.weight.copy_(saved)


@torch.no_grad()
def check_conversion(
    base: Any,
    model: Any,
    layer_map: LayerMap,
    input_ids: Tensor | None = None,
    *,
    batch: int = 2,
    seq_len: int = 32,
    seed: int = 0,
) -> CheckResult:
    """Compare the converted model at num_steps=1 with the base cut to the mapped layers."""
    if input_ids is None:
        g = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, base.config.vocab_size, (batch, seq_len), generator=g)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    with base_with_layers(base, layer_map.layers):
        want = base(input_ids=input_ids, use_cache=False).logits.float()
    with identity_injection(model):
        got = model(input_ids, num_steps=1, init_scale=0.0).logits[..., : want.shape[-1]].float()
    return CheckResult(
        max_abs_diff=(got - want).abs().max().item(),
        max_abs_logit=want.abs().max().item(),
        n_tokens=input_ids.numel(),
    )
