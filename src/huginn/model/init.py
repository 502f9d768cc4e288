"""Weight init: Takase-style scaled truncated normals, as Huginn-0125 was trained.

std = sqrt(2 / (5 d)) for embeddings, qkv, the GLU's fc (both halves) and the adapter;
out_proj = std / sqrt(2 L) (L = effective expected depth) for attention and MLP output projections;
norms are ones, the qk bias zeros. Every draw is truncated at +-3 sigma.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from huginn.model.recurrent import RecurrentLM

OUT_PROJ_NAMES = ("attn.proj", "mlp.proj")


def init_module(module: nn.Module, name: str, cfg, generator: torch.Generator | None = None) -> None:
    """Initialise one module's own parameters (not its children's)."""
    from huginn.model.layers import Attention, RMSNorm

    if isinstance(module, (nn.Linear, nn.Embedding)):
        std = cfg.out_proj_std if name.endswith(OUT_PROJ_NAMES) else cfg.init_std
        with torch.no_grad():
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)
    elif isinstance(module, RMSNorm):
        with torch.no_grad():
            module.weight.fill_(1.0)
    elif isinstance(module, Attention) and module.qk_bias is not None:
        with torch.no_grad():
            module.qk_bias.zero_()


def init_weights(model: RecurrentLM, generator: torch.Generator | None = None) -> None:
    """Initialise every parameter of a RecurrentLM (a tied head is drawn once, as the embedding)."""
    for name, module in model.named_modules():
        if name == "lm_head" and model.model_config.tie_embeddings:
            continue
        init_module(module, name, model.model_config, generator)
