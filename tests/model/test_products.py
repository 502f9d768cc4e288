"""The model's products (`huginn.model.products`): the oneDNN path equals F.linear within fp32
rounding, is taken exactly where it is eligible, and a model forward through it matches fp64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from huginn.errors import HuginnError
from huginn.model import products
from tests.conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")


@pytest.fixture
def calls(monkeypatch):
    """Force the kernel choice (`set(True | False)`) and count the products oneDNN runs."""
    seen: list[tuple[int, ...]] = []
    real = products.onednn_linear

    def spy(x, weight, bias):
        seen.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(products, "onednn_linear", spy)

    def choose(onednn: bool) -> list[tuple[int, ...]]:
        monkeypatch.setitem(products._choice, "onednn", onednn)
        return seen

    return choose


def test_onednn_product_equals_f_linear(calls):
    seen = calls(True)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    wide = torch.randn(3, 20, 64, generator=g)
    for x in (torch.randn(40, 32, generator=g), torch.randn(2, 17, 32, generator=g), wide[..., ::2]):
        for bias in (None, b):
            with torch.no_grad():
                got = products.linear(x, w, bias)
            want = F.linear(x.double(), w.double(), None if bias is None else bias.double())
            assert got.dtype == torch.float32 and got.shape == want.shape
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert len(seen) == 6


def test_only_eligible_products_take_onednn(calls):
    seen = calls(True)
    lin = products.Linear(32, 24)
    x = torch.randn(4, 8, 32)
    with torch.no_grad():
        lin(x[:1, :15])  # 15 rows: below MIN_ROWS
        products.linear(x.bfloat16(), lin.weight.bfloat16())  # not fp32
        products.linear(x, lin.weight.t().contiguous().t())  # a column-major weight
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # autocast's cast, not an fp32 product
    assert seen == []
    with torch.inference_mode():
        lin(x[:2])  # 16 rows
    assert seen == [(2, 8, 32)]
    calls(False)
    with torch.no_grad():
        lin(x)
    assert len(seen) == 1


@pytest.mark.parametrize("bias", [False, True])
def test_onednn_gradients_equal_fp64(calls, bias):
    """Training through oneDNN: the forward and the backward's two products (grad_x, grad_weight)
    run there, and every gradient matches an fp64 F.linear's."""
    seen = calls(True)
    g = torch.Generator().manual_seed(1)
    lin = products.Linear(32, 24, bias=bias)
    x = torch.randn(3, 9, 32, generator=g, requires_grad=True)
    up = torch.randn(3, 9, 24, generator=g)
    (lin(x) * up).sum().backward()
    assert len(seen) == 3  # forward, grad_x, grad_weight
    x64 = x.detach().double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    b64 = lin.bias.detach().double().requires_grad_() if bias else None
    (F.linear(x64, w64, b64) * up.double()).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None and x64.grad is not None and w64.grad is not None
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lin.weight.grad.double(), w64.grad, atol=1e-5, rtol=1e-5)
    if bias:
        assert lin.bias.grad is not None and b64 is not None and b64.grad is not None
        torch.testing.assert_close(lin.bias.grad.double(), b64.grad, atol=1e-5, rtol=1e-5)
    # a frozen weight: only grad_x is computed
    lin.weight.requires_grad_(False)
    seen.clear()
    lin(x).sum().backward()
    assert len(seen) == 2


def test_model_forward_and_gradients_through_onednn_match_fp64(calls):
    model = tiny_model(seed=2)
    ids = torch.randint(1, 200, (2, 24))
    logits, grads = {}, {}
    for onednn in (False, True):
        seen = calls(onednn)
        before = len(seen)
        model.zero_grad()
        torch.manual_seed(5)
        out = model(ids, labels=ids)
        out.loss.backward()
        logits[onednn] = out.logits.detach().double()
        grads[onednn] = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
        assert (len(seen) > before) == onednn
    model = model.double()
    model.zero_grad()
    torch.manual_seed(5)
    out = model(ids, labels=ids)
    out.loss.backward()
    for onednn in (False, True):
        torch.testing.assert_close(logits[onednn], out.logits.detach(), atol=2e-5, rtol=1e-5)
        assert grads[onednn].keys() == {n for n, p in model.named_parameters() if p.grad is not None}
        for n, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(grads[onednn][n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_the_choice_comes_from_huginn_gemm(monkeypatch):
    monkeypatch.setattr(products, "_choice", {})
    monkeypatch.setenv("HUGINN_GEMM", "mkl")
    with pytest.raises(HuginnError, match="HUGINN_GEMM must be one of auto, blas, onednn, got 'mkl'"):
        products.onednn_faster()
    for mode, want in (("blas", False), ("ONEDNN", True)):
        monkeypatch.setattr(products, "_choice", {})
        monkeypatch.setenv("HUGINN_GEMM", mode)
        assert products.onednn_faster() is want
    monkeypatch.setattr(products, "_choice", {})
    monkeypatch.setenv("HUGINN_GEMM", "auto")
    monkeypatch.setattr(products, "probe", lambda: True)
    assert products.onednn_faster() is True
    monkeypatch.setattr(products, "probe", lambda: False)
    assert products.onednn_faster() is True  # decided once per process


def test_forced_sets_the_kernel_for_a_block_and_restores_the_choice(monkeypatch):
    monkeypatch.setattr(products, "_choice", {"onednn": False})
    x, w = torch.randn(32, 8), torch.randn(4, 8)
    with torch.no_grad():
        with products.forced(True):
            assert products.use_onednn(x, w)
        assert not products.use_onednn(x, w)
        monkeypatch.setattr(products, "_choice", {})
        with products.forced(False):
            assert not products.use_onednn(x, w)
    assert products._choice == {}
