"""Fixture parity: every generate_* tensor and steps_adaptive_* count of the reference fixture,
reproduced through `model.generate(..., init_scale=0.0)`."""

from __future__ import annotations

import json

import pytest
import torch

NEW = 12


def _generate(model, expected, **kw):
    prompt = expected["input_ids"][:1, :10]
    return model.generate(prompt, max_new_tokens=NEW, init_scale=0.0, return_dict_in_generate=True, **kw)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("generate_greedy_steps4", dict(num_steps=4)),
        ("generate_continuous_steps4", dict(num_steps=4, continuous_compute=True)),
        ("generate_compress_s8_steps6", dict(num_steps=6, cache_lookup_strategy="compress-s8")),
        ("generate_compress_r2_steps6", dict(num_steps=6, cache_kwargs={"lookup_strategy": "compress-r2"})),
    ],
)
def test_fixed_depth_generation_matches_reference(reference_model, expected, name, kwargs):
    out = _generate(reference_model, expected, **kwargs)
    assert torch.equal(out.sequences, expected[name])
    assert out.compute_steps.shape == (1, NEW)
    assert bool((out.compute_steps == kwargs["num_steps"]).all())


CRITERIA = ["entropy-diff", "latent-diff", "kl", "minp-kl", "argmax-stability", "cosine"]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_adaptive_generation_matches_reference(reference_model, expected, fixture_dir, criterion):
    threshold = json.loads((fixture_dir / "expected.json").read_text())["adaptive_thresholds"][criterion]
    key = criterion.replace("-", "_")
    out = _generate(
        reference_model,
        expected,
        num_steps=16,
        criterion=criterion,
        exit_threshold=threshold,
        cache_lookup_strategy="latest-m4",
    )
    assert torch.equal(out.sequences, expected[f"generate_adaptive_{key}_steps16"])
    assert out.compute_steps.dtype == torch.long
    assert out.compute_steps[0].tolist() == expected[f"steps_adaptive_{key}_steps16"].tolist()


def test_greedy_without_return_dict_is_a_tensor(reference_model, expected):
    prompt = expected["input_ids"][:1, :10]
    seq = reference_model.generate(prompt, max_new_tokens=NEW, num_steps=4, init_scale=0.0)
    assert torch.equal(seq, expected["generate_greedy_steps4"])


def test_cached_generation_equals_full_forward(reference_model, expected):
    """Each greedy token is the argmax of a full (uncached) forward over the sequence so far."""
    seq = expected["generate_greedy_steps4"]
    logits = reference_model(seq, num_steps=4, init_scale=0.0).logits
    assert torch.equal(logits[0, 9:-1].argmax(-1), seq[0, 10:])
