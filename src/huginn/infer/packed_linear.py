"""huginn's fp32 CPU kernel for the linears of compiled decoding (`torch.ops.huginn.packed_linear`).

At decode sizes a linear is a few rows times a weight matrix, and CPU BLAS handles that poorly: at
batch 8 MKL's sgemm reaches about a fifth of the core's FMA peak and half the memory bandwidth it
reaches at batch 1. The kernel (packed_linear.cpp) streams each weight once per call from a packed
copy (column blocks of 32, contiguous, prefetched ahead) into register accumulators for up to 8
rows: measured on the 145 products of a benchmark-shape token, 1.65x MKL at batch 8 and 1.25x at
batch 1 (benchmarks/bench_inference.py measures the end-to-end effect).

It is built at first use with the machine's C++ compiler and `-march=native` (the compiler that
`torch.compile` needs anyway; about 20 s, cached by torch.utils.cpp_extension under a name that
includes the CPU's feature flags, so a shared home directory never hands a binary to a CPU that
lacks its instructions). When it cannot be built, decoding falls back to the column-major layout
with one logged warning. HUGINN_PACKED_LINEAR=0 turns it off (benchmarks compare both).

`attach(linear)` gives one nn.Linear a packed copy for the duration of decoding (`decode_layout`
in compiled.py attaches and detaches) and routes its products of at most `MAX_ROWS` rows through
the kernel; larger ones (a prefill) keep `F.linear` on the original weight, which is left untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from huginn.errors import HuginnError

log = logging.getLogger(__name__)

BLOCK = 32  # columns per packed block (the kernel's two vectors of 16)
# above this, BLAS wins: the kernel reads the weights once per 8 rows (on a benchmark token's 145
# products: 1.71x MKL with 8 rows, 1.31x with 32, 1.12x with 64, 0.98x with 128)
MAX_ROWS = 64
_state: dict[str, bool] = {}


def available() -> bool:
    """Whether the kernel is usable in this process (built or loaded on the first call)."""
    if "ok" not in _state:
        _state["ok"] = _load()
    return _state["ok"]


def _cpu_fingerprint() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha1(f"{platform.machine()} {platform.processor()} {flags}".encode()).hexdigest()[:10]


def _load() -> bool:
    if os.environ.get("HUGINN_PACKED_LINEAR", "1") == "0":
        return False
    if hasattr(torch.ops.huginn, "packed_linear"):  # another copy of this module loaded it
        return True
    try:
        from torch.utils.cpp_extension import load

        load(
            name=f"huginn_packed_linear_{_cpu_fingerprint()}",
            sources=[str(Path(__file__).with_suffix(".cpp"))],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, an unsupported platform: decode without it
        log.warning(
            "huginn's packed fp32 decoding kernel could not be built (%s); decoding uses BLAS instead",
            str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__,
        )
        return False

    @torch.library.register_fake("huginn::packed_linear")
    def _(x: Tensor, packed: Tensor, n: int) -> Tensor:
        return x.new_empty((*x.shape[:-1], n))

    return True


def pack(weight: Tensor) -> Tensor:
    """(N, K) -> (ceil(N / 32), K, 32): packed[b, k, j] = weight[32 b + j, k], zero-padded rows."""
    n, k = weight.shape
    pad = -n % BLOCK
    w = F.pad(weight.detach(), (0, 0, 0, pad)) if pad else weight.detach()
    return w.view(-1, BLOCK, k).transpose(1, 2).contiguous()


def packed_linear(x: Tensor, packed: Tensor, n: int) -> Tensor:
    """x (..., K) @ W^T -> (..., n) through the kernel (built here if need be), W given packed (`pack`)."""
    if not available():
        raise HuginnError(
            "huginn's packed fp32 kernel is not available in this process (see the logged warning, "
            "or HUGINN_PACKED_LINEAR=0); use F.linear"
        )
    return torch.ops.huginn.packed_linear(x, packed, n)


def _forward(self: nn.Linear, x: Tensor) -> Tensor:  # only attached where the kernel is available
    if x.numel() <= MAX_ROWS * x.shape[-1]:
        y = torch.ops.huginn.packed_linear(x, self.packed, self.out_features)
        return y if self.bias is None else y + self.bias
    return type(self).forward(self, x)  # the class's product (huginn.model.products.Linear)


def can_pack(linear: nn.Module) -> bool:
    """A CPU fp32 nn.Linear, while the kernel is available."""
    w = getattr(linear, "weight", None)
    return (
        isinstance(linear, nn.Linear)
        and w is not None
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and available()
    )


def attach(linear: nn.Linear) -> None:
    """Give `linear` a packed copy of its weight (a non-persistent buffer: not saved) and route its
    few-row products through the kernel; `detach` undoes it."""
    linear.register_buffer("packed", pack(linear.weight), persistent=False)
    linear.forward = types.MethodType(_forward, linear)  # type: ignore[method-assign]  # per instance, undone by detach


def detach(linear: nn.Linear) -> None:
    linear._buffers.pop("packed", None)
    linear.__dict__.pop("forward", None)
