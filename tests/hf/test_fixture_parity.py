"""The published reference's recorded outputs, reproduced through AutoModelForCausalLM."""

import pytest
import torch

STEPS = [1, 2, 4, 8, 32]


@pytest.mark.parametrize("num_steps", STEPS)
def test_full_forward_matches_reference(reference_model, expected, num_steps):
    ids = expected["input_ids"]
    with torch.no_grad():
        out = reference_model(ids, num_steps=num_steps, init_scale=0.0)
    torch.testing.assert_close(out.logits, expected[f"logits_steps{num_steps}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.latent_states, expected[f"latents_steps{num_steps}"], atol=1e-4, rtol=0)


def test_cached_decode_matches_reference(reference_model, expected):
    ids = expected["input_ids"]
    got = []
    with torch.no_grad():
        out = reference_model(ids[:, :16], num_steps=4, init_scale=0.0, use_cache=True)
        got.append(out.logits[:, -1])
        cache = out.past_key_values
        for t in range(16, 24):
            out = reference_model(ids[:, t : t + 1], num_steps=4, init_scale=0.0, use_cache=True, past_key_values=cache)
            cache = out.past_key_values
            got.append(out.logits[:, -1])
    # 9 rows: the prefill's last position, then one per decoded token 16..23
    torch.testing.assert_close(torch.stack(got, 1), expected["cached_decode_last_logits_steps4"], atol=1e-4, rtol=0)


def test_depth_changes_the_output(expected):
    # guards the parity tests against a degenerate model whose depth does nothing
    assert (expected["logits_steps1"] - expected["logits_steps32"]).abs().max() > 1e-2
