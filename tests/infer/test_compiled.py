"""Compiled decoding (`generate(..., compile=True)`) equals eager decoding."""

from __future__ import annotations

import pytest
import torch

from huginn.infer import compiled
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy
from tests.conftest import tiny_model


def both(model, ids, depth, new, **kw):
    """Eager and compiled generations; asserts that the compiled graphs really ran."""
    graph = compiled.compiled_block_call()
    calls = []

    def spy(*args):
        calls.append(1)
        return graph(*args)

    with torch.no_grad():
        eager = generate(model, ids, depth, Stopping(new), **kw)
        compiled._compiled = spy
        try:
            comp = generate(model, ids, depth, Stopping(new), compile=True, **kw)
        finally:
            compiled._compiled = graph
    assert len(calls) >= 3 * (new - 1)  # prelude, core steps and coda of every decoded token
    return eager, comp


@pytest.mark.parametrize("policy", [None, "compress-r2"])
def test_compiled_decode_equals_eager_padded_batch(policy):
    model = tiny_model(seed=3)
    ids = torch.randint(1, 200, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    ids[1, :3] = 0
    eager, comp = both(model, ids, Depth(3, init_scale=0.0), 6, attention_mask=mask,
                       policy=CachePolicy.parse(policy, model.model_config.n_layers_in_recurrent_block))
    assert torch.equal(eager.sequences, comp.sequences)
    n = eager.cache.length
    assert n == comp.cache.length
    torch.testing.assert_close(comp.cache.k[:, :, :, :n], eager.cache.k[:, :, :, :n], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(comp.cache.v[:, :, :, :n], eager.cache.v[:, :, :, :n], atol=2e-5, rtol=1e-4)
    assert torch.equal(comp.cache.token_steps(), eager.cache.token_steps())


@pytest.mark.slow
def test_compiled_continuous_and_adaptive_single_row():
    from huginn.infer.exits import make_criterion

    model = tiny_model(seed=4)
    ids = torch.randint(1, 200, (1, 5))
    for depth in (Depth(4, continuous=True, init_scale=0.0), Depth(6, make_criterion("kl", 1e-3), init_scale=0.0)):
        eager, comp = both(model, ids, depth, 8)
        assert torch.equal(eager.sequences, comp.sequences)
        assert torch.equal(eager.compute_steps, comp.compute_steps)
