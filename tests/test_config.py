"""Shapes, validation, one name per config value, and the cost model (parameter counts, FLOPs)."""

import ast
from pathlib import Path

import pytest
import torch

import huginn
from huginn import HuginnError, ModelConfig, RecurrentLM, named_shape
from huginn.config import BLOCK_TYPES
from huginn.model.cost import flops_per_token, param_counts, train_flops_per_token


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


def _matmul_weights(modules) -> int:
    return sum(m.weight.numel() for mod in modules for m in mod.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_kv_heads": 2, "qk_bias": False, "tie_embeddings": False},
        {"block_type": "prenorm", "qk_norm": True, "injection_type": "add"},
    ],
)
def test_flops_count_the_built_models_matmuls(overrides):
    """The one cost model against the weights of a built model: forward is 2 x the matmul weights a
    token passes through; a training step is 6 x those with gradients + 2 x those without."""
    cfg = named_shape("tiny", **overrides)
    t = RecurrentLM(cfg).transformer
    prelude, coda = _matmul_weights(t.prelude), _matmul_weights(t.coda)
    core = _matmul_weights(t.core_block) + (_matmul_weights([t.adapter]) if "adapter" in t else 0)
    head = cfg.padded_vocab_size * cfg.n_embd  # tied or not, the head is a matmul
    for r in (1, 3):
        assert flops_per_token(cfg, r) == 2 * (prelude + r * core + coda + head)
    for n, k in ((0, 1), (3, 2), (5, 4)):
        assert train_flops_per_token(cfg, n, k) == 6 * (prelude + k * core + coda + head) + 2 * n * core


def test_one_name_per_value():
    cfg = named_shape("tiny")
    for old in ("kv_heads", "dim_head", "emb_scale", "std"):
        assert not hasattr(cfg, old), old
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.embed_scale, cfg.init_std) == (4, 16, 8.0, (2 / (5 * 64)) ** 0.5)
    assert cfg == ModelConfig.from_dict(cfg.to_dict())


def _strings(items: list[ast.expr]) -> frozenset | None:
    """The set of two or more string constants, or None."""
    ok = len(items) > 1 and all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items)
    return frozenset(i.value for i in items if isinstance(i, ast.Constant)) if ok else None


def _string_sets(tree: ast.AST) -> tuple[list[frozenset], list[frozenset]]:
    """The choice sets of `Literal["a", "b", ...]` and of tuples / lists of two or more strings."""
    literals, sequences, inside = [], [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
            inside.add(id(node.slice))
            choices = _strings(node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice])
            literals += [choices] if choices else []
        elif isinstance(node, (ast.Tuple, ast.List)) and id(node) not in inside:
            choices = _strings(node.elts)
            sequences += [choices] if choices else []
    return literals, sequences


def test_closed_choices_are_declared_once():
    """Each closed set of choices is one `Literal`; tuples of its values come from `get_args`."""
    from huginn.hf.configuration import BLOCK_CLASS_NAMES

    literals, sequences = [], []
    for path in sorted(Path(huginn.__file__).parent.rglob("*.py")):
        lit, seq = _string_sets(ast.parse(path.read_text()))
        literals += [(s, path.name) for s in lit]
        sequences += [(s, path.name) for s in seq]
    twice = [(sorted(s), w) for s, w in literals if sum(s == t for t, _ in literals) > 1]
    assert not twice, f"Literal declared more than once: {twice}"
    choices = {s for s, _ in literals}
    repeated = [(sorted(s), w) for s, w in sequences if s in choices]
    assert not repeated, f"a Literal's choices written out again: {repeated}"
    assert tuple(BLOCK_CLASS_NAMES) == BLOCK_TYPES  # every block type has its published class name
