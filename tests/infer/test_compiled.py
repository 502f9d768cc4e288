"""Compiled decoding (`generate(..., compile=True)`) equals eager decoding."""

from __future__ import annotations

import pytest
import torch

from huginn.infer import compiled
from huginn.infer.generate import Depth, Stopping, generate
from huginn.infer.kv_cache import CachePolicy
from tests.conftest import tiny_model


def both(model, ids, depth, new, **kw):
    """Eager and compiled generations; asserts that the compiled graphs really ran: the token graph
    once per decoded token at fixed depth, the group graphs (prelude, core steps, coda) with exits."""
    name = "token" if depth.criterion is None else "blocks"
    graph = compiled.compiled_graph(name)
    calls = []

    def spy(*args):
        calls.append(1)
        return graph(*args)

    with torch.no_grad():
        eager = generate(model, ids, depth, Stopping(new), **kw)
        compiled._compiled[name] = spy
        try:
            comp = generate(model, ids, depth, Stopping(new), compile=True, **kw)
        finally:
            compiled._compiled[name] = graph
    assert len(calls) >= (1 if name == "token" else 3) * (new - 1)
    return eager, comp


# one compiled == eager check stays in the default suite; the rest of the matrix is `compile`
@pytest.mark.parametrize("policy", [None, pytest.param("compress-r2", marks=pytest.mark.compile)])
def test_compiled_decode_equals_eager_padded_batch(policy):
    model = tiny_model(seed=3)
    ids = torch.randint(1, 200, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    ids[1, :3] = 0
    eager, comp = both(
        model,
        ids,
        Depth(3, init_scale=0.0),
        6,
        attention_mask=mask,
        policy=CachePolicy.parse(policy, model.model_config.n_layers_in_recurrent_block),
    )
    assert torch.equal(eager.sequences, comp.sequences)
    n = eager.cache.length
    assert n == comp.cache.length
    torch.testing.assert_close(comp.cache.k[:, :, :, :n], eager.cache.k[:, :, :, :n], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(comp.cache.v[:, :, :, :n], eager.cache.v[:, :, :, :n], atol=2e-5, rtol=1e-4)
    assert torch.equal(comp.cache.token_steps(), eager.cache.token_steps())


@pytest.mark.compile
def test_compiled_continuous_and_adaptive_single_row():
    from huginn.infer.exits import make_criterion

    model = tiny_model(seed=4)
    ids = torch.randint(1, 200, (1, 5))
    for depth in (Depth(4, continuous=True, init_scale=0.0), Depth(6, make_criterion("kl", 1e-3), init_scale=0.0)):
        eager, comp = both(model, ids, depth, 8)
        assert torch.equal(eager.sequences, comp.sequences)
        assert torch.equal(eager.compute_steps, comp.compute_steps)


@pytest.mark.compile
def test_compiled_sampling_with_random_initial_state_equals_eager():
    """The token graph draws its initial state before the graph runs: the same random numbers, in
    the same order as eager decoding (which draws after the prelude), for states and sampling."""
    from huginn.infer.sampling import Sampling

    model = tiny_model(seed=5)
    ids = torch.randint(1, 200, (1, 4))
    outs = []
    for comp in (False, True):
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            outs.append(
                generate(
                    model,
                    ids,
                    Depth(3),
                    Stopping(8),
                    Sampling(do_sample=True, temperature=1.0, top_k=20),
                    generator=g,
                    compile=comp,
                ).sequences
            )
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_single_query_attention_equals_sdpa(kv_heads):
    """The written-out attention used inside decoding graphs, against the library kernel (GQA, masks)."""
    import torch.nn.functional as F

    from huginn.model.layers import single_query_attention

    g = torch.Generator().manual_seed(kv_heads)
    B, H, T, hd = 3, 4, 9, 16
    q = torch.randn(B, H, 1, hd, generator=g)
    k, v = torch.randn(B, kv_heads, T, hd, generator=g), torch.randn(B, kv_heads, T, hd, generator=g)
    mask = torch.rand(B, 1, 1, T, generator=g) > 0.5
    mask[..., -1] = True  # a row keeps its own key
    for m in (mask, None):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=kv_heads != H)
        torch.testing.assert_close(single_query_attention(q, k, v, m), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_layout_inside_and_restored_after_errors(dtype, monkeypatch):
    """fp32 linears get a packed copy for huginn's kernel (where it could not be built: column-major
    storage, as for every other dtype); everything is as before after the context, even on errors."""
    from huginn.infer import packed_linear

    for kernel in (True, False):  # bf16 stays column-major even where the kernel is available
        monkeypatch.setitem(packed_linear._state, "ok", kernel and packed_linear.available())
        packs = kernel and dtype == torch.float32
        model = tiny_model(seed=5).to(dtype)
        before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
        keys = set(model.state_dict())
        linear = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert linear
        with pytest.raises(RuntimeError, match="inside"), compiled.decode_layout(model):
            assert set(model.state_dict()) == keys  # the packed copies are not part of the checkpoint
            for name, value in linear.items():
                m = model.get_submodule(name)
                if packs:
                    assert m.weight.is_contiguous() and m.packed.shape[1:] == (m.in_features, 32), name
                    for rows in (3, packed_linear.MAX_ROWS + 1):  # the kernel, then F.linear
                        x = torch.randn(rows, m.in_features, dtype=dtype)
                        torch.testing.assert_close(m(x), x @ value.t(), rtol=1e-5, atol=1e-5)
                else:
                    w = m.weight  # transposed storage, same values
                    assert w.stride() == (1, w.shape[0]) and torch.equal(w, value), name
            raise RuntimeError("inside")
        for n, p in model.named_parameters():
            assert p.is_contiguous() and p.data_ptr() == before[n][0] and torch.equal(p, before[n][1]), n
        for name in linear:
            m = model.get_submodule(name)
            assert "packed" not in m._buffers and "forward" not in m.__dict__, name


@pytest.mark.compile
def test_compiled_generate_leaves_weights_as_they_were():
    model = tiny_model(seed=6)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    both(model, torch.randint(1, 200, (1, 4)), Depth(2, init_scale=0.0), 3)
    assert all(p.is_contiguous() and p.data_ptr() == ptrs[n] for n, p in model.named_parameters())


def frozen_tokens(model, ids, depth, new):
    """Eager and frozen-graph generations (asserting the frozen graph ran once per decoded token)."""
    calls = []
    real = compiled.FrozenGraph.__call__

    def spy(self, *args):
        calls.append(1)
        return real(self, *args)

    with torch.no_grad():
        eager = generate(model, ids, depth, Stopping(new)).sequences
        compiled.FrozenGraph.__call__ = spy
        try:
            frozen = generate(model, ids, depth, Stopping(new), compile="frozen").sequences
        finally:
            compiled.FrozenGraph.__call__ = real
    assert len(calls) == new - 1
    return eager, frozen


@pytest.mark.compile
def test_frozen_decode_equals_eager_and_follows_weight_changes():
    """`compile="frozen"` compiles the weights in as constants; dynamo guards them by identity
    only, so a weight changed in place must make the next `generate` build the graph anew (a stale
    graph would keep generating the old model's tokens)."""
    model = tiny_model(seed=6)
    ids = torch.randint(1, 200, (2, 5))
    depth = Depth(3, init_scale=0.0)
    eager, frozen = frozen_tokens(model, ids, depth, 6)
    assert torch.equal(eager, frozen)
    first = compiled._frozen[model]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)  # in place: same Parameter objects, new values
    eager2, frozen2 = frozen_tokens(model, ids, depth, 6)
    assert not torch.equal(eager2, eager)  # the change matters, so a stale graph would be caught
    assert torch.equal(eager2, frozen2)
    assert compiled._frozen[model] is not first
    _, again = frozen_tokens(model, ids, depth, 6)  # unchanged weights: the same graph is reused
    assert compiled._frozen[model].key == compiled.weights_key(model) and torch.equal(again, eager2)


def test_unknown_compile_mode_is_a_clear_error():
    from huginn.errors import HuginnError

    with pytest.raises(HuginnError, match="use False, True or 'frozen'"):
        generate(tiny_model(seed=6), torch.ones(1, 3, dtype=torch.long), Depth(2), Stopping(2), compile="fast")


@pytest.mark.compile
def test_compiled_decode_compiles_the_token_graph_once_per_generation():
    """Every token of a generation reuses one graph: the fed tokens' strides do not change as the
    sequences grow (a view of the last column once did, and each token compiled anew)."""
    torch._dynamo.reset()  # dynamo's memory of earlier tests' shapes would hide a recompile
    model = tiny_model(seed=6)
    ids = torch.randint(1, 200, (3, 5))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        eager = generate(model, ids, Depth(2, init_scale=0.0), Stopping(5))
        comp = generate(model, ids, Depth(2, init_scale=0.0), Stopping(5), compile=True)
    assert torch.equal(comp.sequences, eager.sequences)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1
