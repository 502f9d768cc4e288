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
    real = products._onednn

    def spy(x, weight, bias):
        seen.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(products, "_onednn", spy)

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
    # training: the gradient flows through F.linear and is right
    y = lin(x)
    y.square().sum().backward()
    assert seen == []
    w = lin.weight.detach().double().requires_grad_()
    F.linear(x.double(), w, lin.bias.detach().double()).square().sum().backward()
    assert lin.weight.grad is not None and w.grad is not None
    torch.testing.assert_close(lin.weight.grad.double(), w.grad, atol=1e-4, rtol=1e-5)
    with torch.inference_mode():
        lin(x[:2])  # 16 rows
    assert seen == [(2, 8, 32)]
    calls(False)
    with torch.no_grad():
        lin(x)
    assert len(seen) == 1


def test_model_forward_through_onednn_matches_fp64(calls):
    model = tiny_model(seed=2)
    ids = torch.randint(1, 200, (2, 24))
    logits = {}
    for onednn in (False, True):
        seen = calls(onednn)
        before = len(seen)
        torch.manual_seed(5)
        with torch.no_grad():
            logits[onednn] = model(ids).logits.double()
        assert (len(seen) > before) == onednn
    torch.manual_seed(5)
    with torch.no_grad():
        ref = model.double()(ids).logits
    for got in logits.values():
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


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
