"""Equivalences of the core model on tiny random weights."""

import pytest
import torch

from huginn import HuginnError, RecurrentLM, named_shape
from huginn.hf import HuginnDynamicCache
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RecurrentLM(named_shape("tiny")).eval()


def run(model, ids, steps, **kw):
    with torch.no_grad():
        return model(ids, steps, init_scale=0.0, **kw)


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 2, "qk_bias": False}, {"block_type": "prenorm"}])
def test_cached_decode_equals_full_forward(overrides):
    torch.manual_seed(1)
    m = RecurrentLM(named_shape("tiny", **overrides)).eval()
    ids = torch.randint(0, 256, (2, 20))
    full = run(m, ids, 5).logits
    cache = HuginnDynamicCache()
    parts = [run(m, ids[:, :7], 5, cache=cache).logits]
    parts.append(run(m, ids[:, 7:12], 5, cache=cache).logits)  # a chunk of several tokens
    for t in range(12, 20):
        parts.append(run(m, ids[:, t : t + 1], 5, cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equals_one_at_a_time(model):
    torch.manual_seed(2)
    rows = [torch.randint(0, 256, (n,)) for n in (11, 6, 9)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    batched = run(model, ids, 4, attention_mask=mask).logits
    for i, r in enumerate(rows):
        solo = run(model, r[None], 4).logits
        torch.testing.assert_close(batched[i, width - len(r) :], solo[0], atol=1e-5, rtol=1e-5)


def test_padded_cached_decode_equals_solo(model):
    rows = [torch.randint(0, 256, (n,)) for n in (8, 5)]
    ids = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 8 - len(r) :], mask[i, 8 - len(r) :] = r, 1
    nxt = torch.randint(0, 256, (2, 1))
    cache = HuginnDynamicCache()
    run(model, ids, 3, attention_mask=mask, cache=cache)
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    step = run(model, nxt, 3, attention_mask=mask2, cache=cache).logits
    for i, r in enumerate(rows):
        solo = run(model, torch.cat([r, nxt[i]])[None], 3).logits
        torch.testing.assert_close(step[i, -1], solo[0, -1], atol=1e-5, rtol=1e-5)


def test_input_states_continue_the_recurrence(model):
    ids = torch.randint(0, 256, (2, 10))
    first = run(model, ids, 3)
    continued = run(model, ids, 5, input_states=first.state)
    torch.testing.assert_close(continued.logits, run(model, ids, 8).logits, atol=1e-5, rtol=1e-5)


def test_per_step_states(model):
    ids = torch.randint(0, 256, (1, 6))
    out = run(model, ids, 6, return_states=True)
    assert len(out.states) == 6
    torch.testing.assert_close(out.states[-1], out.state)
    torch.testing.assert_close(out.states[2], run(model, ids, 3).state)


def test_truncated_backprop_pair():
    torch.manual_seed(3)
    m = RecurrentLM(named_shape("tiny"))
    ids = torch.randint(0, 256, (2, 8))
    pair = m(ids, (3, 2), init_scale=0.0)
    assert torch.equal(pair.logits, m(ids, 5, init_scale=0.0).logits)  # same values as 5 steps
    pair.logits.sum().backward()
    assert m.transformer.prelude[0].attn.Wqkv.weight.grad.abs().sum() > 0  # through the injection
    m.zero_grad()
    no_grad_core = m(ids, (5, 0), init_scale=0.0)
    no_grad_core.logits.sum().backward()
    assert (
        m.transformer.core_block[0].mlp.fc.weight.grad is None
        or m.transformer.core_block[0].mlp.fc.weight.grad.abs().sum() == 0
    )


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(4)
    m = RecurrentLM(named_shape("tiny"))
    ids = torch.randint(0, 256, (2, 8))
    m(ids, (1, 3), init_scale=0.0).logits.square().mean().backward()
    plain = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(ids, (1, 3), init_scale=0.0, checkpoint_core=True).logits.square().mean().backward()
    for a, p in zip(plain, m.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_initial_state_is_seedable(model):
    ids = torch.randint(0, 256, (1, 5))
    a = model(ids, 2, generator=torch.Generator().manual_seed(7)).logits
    b = model(ids, 2, generator=torch.Generator().manual_seed(7)).logits
    c = model(ids, 2, generator=torch.Generator().manual_seed(8)).logits
    assert torch.equal(a, b) and not torch.equal(a, c)
    e = torch.zeros(1, 5, 64)
    s = model.initialize_state(e, 1.0, torch.Generator().manual_seed(0))
    cfg = model.model_config
    assert s.abs().max() <= 3 * cfg.init_std * cfg.embed_scale + 1e-6  # truncated at 3 sigma
    assert torch.equal(model.initialize_state(e, 0.0), torch.zeros_like(e))


def test_labels_loss_is_shifted_cross_entropy():
    m = tiny_model(seed=5)
    ids = torch.randint(0, 256, (2, 9))
    labels = ids[:, 1:].clone()
    labels[0, :3] = -100
    out = m(ids[:, :-1], labels=labels, num_steps=2, init_scale=0.0)
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)


@pytest.mark.parametrize("steps", [0, -1, (0, 0), (1, -1), "4", (1, 2, 3), 2.5])
def test_bad_num_steps(model, steps):
    with pytest.raises(HuginnError, match="num_steps"):
        model(torch.zeros(1, 3, dtype=torch.long), steps)


def test_too_long_input(model):
    with pytest.raises(HuginnError, match="longer than the block size 128"):
        model(torch.zeros(1, 129, dtype=torch.long), 1)
