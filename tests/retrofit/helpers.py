"""Tiny random transformers bases of each supported family, with every parameter randomised
(norm weights included, so a swapped or missing norm shows up in the logits)."""

from __future__ import annotations

import torch

LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)

# name -> (family, config overrides)
BASES = {
    "llama-gqa-tied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mha-untied": (
        "llama",
        dict(
            num_key_value_heads=4,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000.0),
        ),
    ),
    "llama3-rope-scaling": (
        "llama",
        dict(num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
    ),
    "olmo2-gqa": ("olmo2", dict(num_key_value_heads=2, tie_word_embeddings=False)),
}


def tiny_base(name: str, seed: int = 0, n_layers: int = 6):
    from transformers import LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM

    family, overrides = BASES[name]
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "olmo2": (Olmo2Config, Olmo2ForCausalLM)}[family]
    cfg = config_cls(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **overrides,
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm weights: away from one, so norm mix-ups change the output
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model
