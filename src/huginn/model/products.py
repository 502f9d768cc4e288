"""The model's matrix products (`Linear`): which CPU kernel runs an fp32 product.

PyTorch's CPU `F.linear` calls MKL's sgemm on x86, and on AMD processors MKL runs its AVX2 code;
oneDNN, which every x86 PyTorch build also carries, runs AVX-512 there. On the model's products
(256-2,048 rows, width 256, one thread, a 2-core Zen 5 EPYC) oneDNN measured 1.7-2.3x MKL
(`benchmarks/bench_products.py`). On
Intel processors MKL runs AVX-512 itself. So the first eligible product of a process times both
kernels on one product of the model's size and keeps the faster (`onednn_faster`);
HUGINN_GEMM=blas or HUGINN_GEMM=onednn chooses instead of timing.

Eligible: fp32 on the CPU, at least `MIN_ROWS` rows (below that oneDNN's larger fixed cost per
call loses: 0.4-0.9x MKL at 2 rows, break-even between 8 and 16 by shape), no autocast (which casts `F.linear`'s
inputs), a contiguous weight, outside compiled graphs (inductor picks its own kernels). Everything
else is `F.linear`. oneDNN's product has no autograd kernel, so where a gradient is recorded
`OneDNNProduct` runs the backward's two products on oneDNN too. The kernels sum in different
orders, so outputs differ in fp32 rounding (a product's largest error against fp64 within 2.5x of
MKL's); each is deterministic, and a row's result does not depend on the other rows (measured
from 2 rows up).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from huginn.errors import HuginnError

MIN_ROWS = 16
BACKENDS = ("auto", "blas", "onednn")
_choice: dict[str, bool] = {}


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` on oneDNN (inference only: no autograd kernel; `linear` chooses)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def best_time(fn, reps: int = 5) -> float:
    """The best wall time of `reps` calls of `fn` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe() -> bool:
    """Whether oneDNN runs a product of the model's size (256 x 512 by 512 x 1,024, fp32) at least
    10% faster than `F.linear` here, at the current thread count (~30 ms, once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 512, generator=g), torch.randn(1024, 512, generator=g)
    with torch.inference_mode():
        try:
            onednn = best_time(lambda: onednn_linear(x, w, None))
        except (RuntimeError, AttributeError):  # a build without the op
            return False
        blas = best_time(lambda: F.linear(x, w))
    return onednn * 1.1 < blas


def gemm_mode() -> str:
    """HUGINN_GEMM, checked: auto (the default), blas or onednn."""
    mode = os.environ.get("HUGINN_GEMM", "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise HuginnError(f"HUGINN_GEMM must be one of {', '.join(BACKENDS)}, got {mode!r}")
    return mode


def onednn_faster() -> bool:
    """The kernel choice of this process: HUGINN_GEMM, and with `auto` the `probe`."""
    if "onednn" not in _choice:
        mode = gemm_mode()
        _choice["onednn"] = probe() if mode == "auto" else mode == "onednn"
    return _choice["onednn"]


@contextmanager
def forced(onednn: bool) -> Iterator[None]:
    """Within the block, eligible products take oneDNN (`onednn`) or `F.linear`, whatever this
    process chose (benchmarks time both kernels in one run)."""
    before = _choice.get("onednn")
    _choice["onednn"] = onednn
    try:
        yield
    finally:
        if before is None:
            _choice.pop("onednn")
        else:
            _choice["onednn"] = before


def use_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether the product x @ weight^T takes the oneDNN path (see the module docstring)."""
    return (
        not torch.compiler.is_compiling()
        and x.numel() >= MIN_ROWS * x.shape[-1]
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")  # autocast casts F.linear's inputs: keep its dtype
        and weight.is_contiguous()
        and onednn_faster()
    )


class OneDNNProduct(torch.autograd.Function):
    """x @ weight^T (+ bias) on oneDNN, and its backward's two products on oneDNN too:
    grad_x = grad @ weight, grad_weight = grad^T @ x (the rows of every token summed)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return onednn_linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])  # (M, N)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad, weight.t().contiguous(), None)  # (..., N) @ (N, K)
        if ctx.needs_input_grad[1]:
            grad_w = onednn_linear(rows.t(), x.reshape(-1, x.shape[-1]).t().contiguous(), None)  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN where `use_onednn` says so."""
    if not use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return OneDNNProduct.apply(x, weight, bias)
    return onednn_linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose products go through `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
