"""The preallocated cache: policies parsed once, slot sharing, step records, latest fill, skip masks."""

from __future__ import annotations

import pytest
import torch

from huginn.errors import HuginnError
from huginn.infer.kv_cache import CachePolicy, HuginnStaticCache


@pytest.mark.parametrize(
    "spec, policy",
    [
        ("full", CachePolicy("none", 0, "skip")),
        ("latest-m4", CachePolicy("none", 0, "latest")),
        ("available-m4", CachePolicy("none", 0, "latest")),
        ("skip", CachePolicy("none", 0, "skip")),
        ("compress-s16", CachePolicy("cycle", 16, "latest")),
        ("compress-r2", CachePolicy("run", 2, "latest")),
        ("latest-m4-compress-s16", CachePolicy("cycle", 16, "latest")),
        ("skip-compress-r3", CachePolicy("run", 3, "skip")),
        (None, CachePolicy()),
    ],
)
def test_reference_strings_convert_once(spec, policy):
    assert CachePolicy.parse(spec, 4) == policy


@pytest.mark.parametrize("spec", ["latest-m3", "compress-x4", "randomized", "always-last-m4", "compress-anchor"])
def test_bad_strategies_are_one_line_errors(spec):
    with pytest.raises(HuginnError) as err:
        CachePolicy.parse(spec, 4)
    assert "\n" not in str(err.value)
    assert "latest-m4" in str(err.value)


def test_bad_policy_fields():
    with pytest.raises(HuginnError, match="valid: latest, skip"):
        CachePolicy(lookup="nearest")  # type: ignore[arg-type]
    with pytest.raises(HuginnError, match="n >= 1"):
        CachePolicy("cycle", 0)


def _cache(policy, steps=4, B=1, cap=8):
    return HuginnStaticCache(
        2, 4, 2, kv_heads=2, head_dim=4, batch_size=B, max_steps=steps, capacity=cap, policy=policy
    )


def _write_token(cache, n_steps, value_of):
    """Run one fake forward of one token: prelude, n_steps core steps, coda; keys carry their slot id."""
    B = cache.rows
    for slot in [0, 1] + [2 + c for c in range(4 * n_steps)] + [-1, -2]:
        k = torch.full((B, 2, 1, 4), float(value_of(slot)))
        cache.update(k, k, slot)


def test_slot_sharing_maps_like_the_reference():
    for spec, want in [("compress-s8", lambda i: (i - 2) % 8 + 2), ("compress-r2", lambda i: (i - 2) // 2 + 2)]:
        cache = _cache(CachePolicy.parse(spec), steps=6)
        for slot in range(2, 2 + 24):
            assert cache.storage_index(slot) == want(slot)


def test_compress_s8_cuts_core_memory_16x_at_32_steps():
    full = _cache(CachePolicy(), steps=32)
    s8 = _cache(CachePolicy.parse("compress-s8"), steps=32)
    assert full.memory_bytes("core") == 16 * s8.memory_bytes("core")
    assert full.memory_bytes() == full.k.numel() * 4 * 2


def test_latest_fills_missing_steps_with_the_latest_same_layer_entry():
    cache = _cache(CachePolicy(lookup="latest"), steps=4)
    _write_token(cache, 4, lambda s: s)
    _write_token(cache, 2, lambda s: 100 + s)  # exits after 2 steps
    steps = cache.token_steps()
    assert steps.tolist() == [[4, 2]]
    for t in range(4):
        for j in range(4):
            k, _ = cache.entries(2 + 4 * t + j)
            want = 100 + 2 + 4 * min(t, 1) + j
            assert k[0, 0, 1, 0].item() == want
            assert k[0, 0, 0, 0].item() == 2 + 4 * t + j


def test_skip_masks_missing_entries():
    cache = _cache(CachePolicy(lookup="skip"), steps=4)
    _write_token(cache, 4, lambda s: s)
    _write_token(cache, 1, lambda s: s)
    k = torch.zeros(1, 2, 1, 4)
    for slot in (0, 1):
        assert cache.update(k, k, slot)[2] is None
    _, _, valid = cache.update(k, k, 2)  # step 0: everyone has it
    assert valid is None
    _, _, valid = cache.update(k, k, 6)  # step 1: token 1 ran one step only
    assert valid.tolist() == [[True, False, True]]


def test_active_rows_freeze_writes_and_step_records():
    cache = _cache(CachePolicy(), steps=2, B=2)
    cache.active_rows = torch.tensor([True, False])
    _write_token(cache, 2, lambda s: s)
    cache.active_rows = None
    k, _ = cache.entries(2)
    assert k[0, 0, 0, 0].item() == 2 and k[1, 0, 0, 0].item() == 0
    assert cache.token_steps().tolist() == [[2], [0]]


def test_capacity_and_depth_grow_without_losing_entries():
    cache = _cache(CachePolicy(), steps=1, cap=1)
    _write_token(cache, 1, lambda s: s)
    _write_token(cache, 3, lambda s: 50 + s)  # deeper and longer than allocated
    assert cache.capacity >= 2 and cache.max_steps == 3
    k, _ = cache.entries(2 + 4 * 2)  # step 2, layer 0: token 0 only ran step 0 -> latest fill
    assert k[0, 0, :, 0].tolist() == [2.0, 50.0 + 10]


def test_crop_forgets_tokens():
    cache = _cache(CachePolicy(), steps=1)
    for _ in range(3):
        _write_token(cache, 1, lambda s: s)
    cache.crop(1)
    assert cache.get_seq_length() == 1
    _write_token(cache, 1, lambda s: 7)
    assert cache.entries(0)[0][0, 0, :, 0].tolist() == [0.0, 7.0]


def test_cached_decode_matches_reference(reference_model, expected):
    """Prefill 16 tokens, decode 8 one at a time through the static cache (fixture's cached decode)."""
    ids = expected["input_ids"]
    cache = HuginnStaticCache.for_model(reference_model, 2, 4, 24)
    out = [
        reference_model(ids[:, :16], num_steps=4, init_scale=0.0, past_key_values=cache, use_cache=True).logits[:, -1]
    ]
    for t in range(16, 24):
        out.append(
            reference_model(
                ids[:, t : t + 1], num_steps=4, init_scale=0.0, past_key_values=cache, use_cache=True
            ).logits[:, -1]
        )
    torch.testing.assert_close(torch.stack(out, 1), expected["cached_decode_last_logits_steps4"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"coda_input_norm": False, "block_type": "prenorm", "qk_bias": False}])
def test_cached_token_logits_equal_full_forwards(overrides):
    """The logits of every cached forward (prefill, then one token at a time) equal an uncached
    forward over the sequence so far (also for retrofitted bases, whose coda reads the state
    without ln_f)."""
    from huginn.infer.generate import Depth, run_tokens
    from huginn.infer.kv_cache import HuginnStaticCache
    from tests.conftest import tiny_model

    model = tiny_model(seed=5, **overrides)
    ids = torch.randint(1, 200, (1, 9))
    depth = Depth(3, init_scale=0.0)
    cache = HuginnStaticCache.for_model(model, 1, 3, 16)
    with torch.no_grad():
        for t in range(5, ids.shape[1] + 1):
            new = ids[:, :5] if t == 5 else ids[:, t - 1 : t]
            got = run_tokens(model, new, cache, depth).logits[0]
            want = model(ids[:, :t], num_steps=3, init_scale=0.0).logits[0, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
