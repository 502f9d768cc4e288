"""Conversion exactness on random tiny bases of each family (fp32, 1e-4), injection options, and
the RoPE permutation. Every base has all its parameters randomised (norms included)."""

import importlib

import pytest
import torch

from huginn.model.layers import apply_rope, rope_table
from huginn.retrofit import LayerMap, check_conversion, convert, rope_permutation

from .helpers import BASES, tiny_base

convert_module = importlib.import_module("huginn.retrofit.convert")  # the module, not the function

TOL = 1e-4
FULL = LayerMap((0, 1), (2, 3, 4), (5,))  # every layer of a 6-layer base, in order
DROPPING = LayerMap((0,), (2, 4), (5,))  # drops layers 1 and 3


@pytest.fixture(scope="module", params=sorted(BASES))
def base(request):
    return tiny_base(request.param)


def tokens(seq_len=48, batch=2, seed=0, vocab=96):
    return torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_map_identity_reproduces_the_base(base):
    x = tokens()  # 48 positions: past the llama3 base's original 16, so the scaled frequencies matter
    want = base(input_ids=x, use_cache=False).logits
    model = convert(base, FULL, "identity")
    got = model(x, num_steps=1).logits  # a random initial state: the identity adapter ignores it
    assert got.shape == want.shape  # no vocabulary padding
    assert want.abs().max() > 1.0  # logits of a useful scale, so 1e-4 means something
    assert (got - want).abs().max().item() < TOL


@torch.no_grad()
def test_identity_injection_ignores_depth_and_state(base):
    x = tokens(seq_len=16)
    model = convert(base, DROPPING, "identity")
    one = model(x, num_steps=1, init_scale=1.0).logits
    for steps in (2, 5):
        assert (model(x, num_steps=steps, init_scale=1.0).logits - one).abs().max().item() < TOL


@torch.no_grad()
@pytest.mark.parametrize("injection", ["identity", "linear", "add"])
def test_dropping_map_equals_the_base_cut_to_it(base, injection):
    model = convert(base, DROPPING, injection)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = check_conversion(base, model, DROPPING, tokens())
    assert result.max_abs_diff < TOL, result
    # the check leaves the model (its adapter) as it found it, and the base whole
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(base.model.layers) == 6


@torch.no_grad()
def test_injections_are_what_they_say():
    base = tiny_base("llama-gqa-tied")
    identity = convert(base, FULL, "identity").transformer.adapter.weight
    d = identity.shape[0]
    assert torch.equal(identity, torch.cat([torch.zeros(d, d), torch.eye(d)], dim=1))
    linear = convert(base, FULL, "linear", seed=3)
    w = linear.transformer.adapter.weight
    assert abs(w.std().item() - linear.model_config.init_std) < 0.2 * linear.model_config.init_std
    assert torch.equal(w, convert(base, FULL, "linear", seed=3).transformer.adapter.weight)  # seeded
    x = tokens(seq_len=8)
    # a random adapter depends on the state and on the depth
    a, b = linear(x, num_steps=1, init_scale=0.0).logits, linear(x, num_steps=3, init_scale=0.0).logits
    assert (a - b).abs().max() > 1e-3
    add = convert(base, FULL, "add")
    assert "adapter" not in add.transformer and add.model_config.injection_type == "add"
    assert (add(x, num_steps=1, init_scale=0.0).logits - base(input_ids=x).logits).abs().max() < TOL
    for model, name in ((convert(base, FULL, "identity"), "identity"), (linear, "linear"), (add, "add")):
        assert model.config.retrofit["injection"] == name
        assert model.config.retrofit["core"] == [2, 3, 4]


def test_config_follows_the_base():
    llama = convert(tiny_base("llama3-rope-scaling"), FULL).model_config
    assert (llama.block_type, llama.qk_norm, llama.n_kv_heads, llama.tie_embeddings) == ("prenorm", False, 2, True)
    assert llama.rope_scaling["rope_type"] == "llama3" and llama.rope_base == 500000.0
    assert (llama.embed_scale, llama.coda_input_norm, llama.qk_bias) == (1.0, False, False)
    olmo = convert(tiny_base("olmo2-gqa"), FULL).model_config
    assert (olmo.block_type, olmo.qk_norm, olmo.tie_embeddings) == ("postnorm", True, False)


@torch.no_grad()
def test_without_the_rope_permutation_the_check_fails(monkeypatch):
    """The check can fail: converting without the per-head row permutation is far off."""
    base = tiny_base("llama-gqa-tied")
    monkeypatch.setattr(convert_module, "rope_permutation", lambda hd: torch.arange(hd))
    result = check_conversion(base, convert(base, FULL), FULL, tokens())
    assert result.max_abs_diff > 1e-2 and not result.ok()


def test_rope_permutation_turns_half_split_into_interleaved():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hd, S = 16, 20
    assert rope_permutation(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    q, k = torch.randn(1, 2, S, hd), torch.randn(1, 2, S, hd)  # (B, H, S, hd), half-split layout
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.arange(S).float()[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, emb.cos()[None], emb.sin()[None])
    perm = rope_permutation(hd)
    table = rope_table(hd, S, 10000.0)
    q_ours = apply_rope(q[..., perm].transpose(1, 2), table).transpose(1, 2)
    k_ours = apply_rope(k[..., perm].transpose(1, 2), table).transpose(1, 2)
    assert torch.allclose(q_ours, q_hf[..., perm], atol=1e-5)
    # attention scores, the quantity that matters, are unchanged
    assert torch.allclose(q_ours @ k_ours.transpose(-1, -2), q_hf @ k_hf.transpose(-1, -2), atol=1e-4)
