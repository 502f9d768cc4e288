"""Shapes, validation and parameter counts."""

import pytest

from huginn import HuginnError, RecurrentLM, named_shape
from huginn.model.cost import flops_per_token, param_counts


def test_published_parameter_counts():
    pc = param_counts(named_shape("nebel-raven-3.5b"))
    assert pc.core == 1_581_592_320  # "1,581m in recurrent block"
    assert pc.core // 4 == 395_398_080  # per block
    assert pc.total == 3_564_976_800
    # about 0.11 TFLOP per token at 32 steps, as measured with FlopCounterMode on the reference
    assert 0.10e12 < flops_per_token(named_shape("nebel-raven-3.5b"), 32, 1024) < 0.12e12


@pytest.mark.parametrize(
    "shape,overrides",
    [
        ("tiny", {}),
        ("small", {}),
        ("tiny", {"n_kv_heads": 2, "qk_bias": False, "tie_embeddings": False}),
        ("tiny", {"block_type": "postnorm", "qk_norm": True, "injection_type": "add"}),
    ],
)
def test_counts_match_built_model(shape, overrides):
    cfg = named_shape(shape, **overrides)
    model = RecurrentLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg).total


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"n_embd": 65}, "not divisible by n_heads"),
        ({"n_kv_heads": 3}, "not divisible by n_kv_heads"),
        ({"mean_recurrence": 0}, "mean_recurrence"),
        ({"block_type": "fancy"}, "valid: sandwich"),
        ({"injection_type": "gate"}, "valid: linear, add"),
        ({"n_layers_in_recurrent_block": 0}, "positive"),
        ({"bogus": 1}, "unknown model config field"),
    ],
)
def test_bad_shapes(overrides, message):
    with pytest.raises(HuginnError, match=message):
        named_shape("tiny", **overrides)


def test_unknown_shape():
    with pytest.raises(HuginnError, match="valid: nebel-raven-3.5b, tiny, demo"):
        named_shape("huge")


def test_replace_rederives_dependent_defaults():
    cfg = named_shape("tiny", n_embd=96, n_heads=6)
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.embed_scale) == (16, 6, 96**0.5)
