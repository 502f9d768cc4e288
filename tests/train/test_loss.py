"""Chunked linear + cross-entropy == the plain loss, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from huginn.train.loss import linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_plain(chunk):
    torch.manual_seed(0)
    h = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(33, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 33, (50,))
    y[::5] = -100
    plain = F.cross_entropy(F.linear(h, w), y, ignore_index=-100)
    gh, gw = torch.autograd.grad(plain * 3, (h, w))
    ours = linear_cross_entropy(h, w, y, chunk_size=chunk)
    oh, ow = torch.autograd.grad(ours * 3, (h, w))
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oh, gh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ow, gw, rtol=1e-10, atol=1e-12)


def test_shared_denominator_and_fp32():
    torch.manual_seed(1)
    h = torch.randn(2, 9, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    y = torch.randint(0, 20, (2, 9))
    denom = torch.tensor(40.0)
    ours = linear_cross_entropy(h, w, y, chunk_size=4, denom=denom)
    plain = linear_cross_entropy(h, w, y, chunk_size=0, denom=denom)
    torch.testing.assert_close(ours, plain)
    (a,) = torch.autograd.grad(ours, h)
    (b,) = torch.autograd.grad(plain, h)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_only_h_requires_grad():
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(5, 4)
    y = torch.randint(0, 5, (6,))
    linear_cross_entropy(h, w, y, chunk_size=2).backward()
    assert h.grad is not None


@pytest.mark.parametrize("overrides", [{}, {"coda_input_norm": False, "block_type": "prenorm", "qk_bias": False}])
def test_training_forward_loss_equals_model_forward(overrides):
    """The training forward (chunked loss, seeded per-row initial state) computes the loss of the
    model's own forward, also for retrofitted bases whose coda reads the state without ln_f."""
    from huginn.config import named_shape
    from huginn.model.recurrent import RecurrentLM
    from huginn.train.forward import TrainForward

    torch.manual_seed(0)
    model = RecurrentLM(named_shape("tiny", **overrides))
    x = torch.randint(0, 200, (2, 12))
    y = torch.randint(0, 200, (2, 12))
    fwd = TrainForward(model, loss_chunk=7)
    with torch.no_grad():
        got = fwd(x, y, 1, 2, torch.tensor([3, 4]))
        states = fwd.initial_state(model.embed(x, model.context(2, 12)), torch.tensor([3, 4]))
        logits = model(x, (1, 2), input_states=states).logits
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
