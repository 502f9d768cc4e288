"""huginn's packed fp32 CPU kernel for decoding linears equals F.linear, and compiled decoding uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from huginn.infer import packed_linear
from huginn.infer.generate import Depth, Stopping, generate
from tests.conftest import tiny_model


def test_the_kernel_builds_here():
    # every machine that runs compiled decoding has a C++ compiler (inductor needs one), so a failed
    # build is a defect to see, not a case to skip
    assert packed_linear.available()


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 16, 17])
@pytest.mark.parametrize("n, k", [(96, 64), (40, 33), (5, 7), (1, 300)])
def test_packed_linear_equals_linear(rows, n, k):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    w = torch.randn(n, k, generator=g)
    x = torch.randn(rows, k, generator=g)
    torch.testing.assert_close(
        packed_linear.packed_linear(x, packed_linear.pack(w), n), F.linear(x, w), rtol=1e-5, atol=1e-5
    )


def test_packed_linear_keeps_leading_dims_and_reads_strided_inputs():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(70, 48, generator=g)
    x = torch.randn(3, 4, 96, generator=g)[:, 1:, ::2]  # (3, 3, 48), not contiguous
    y = packed_linear.packed_linear(x, packed_linear.pack(w), 70)
    assert y.shape == (3, 3, 70)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_pack_layout():
    w = torch.arange(40 * 3, dtype=torch.float32).view(40, 3)
    p = packed_linear.pack(w)
    assert p.shape == (2, 3, 32) and p.is_contiguous()
    assert torch.equal(p[1, 2, 7], w[39, 2]) and torch.equal(p[1, :, 8:], torch.zeros(3, 24))  # zero padding


def test_packed_linear_rejects_what_it_cannot_compute():
    w = packed_linear.pack(torch.randn(32, 16))
    with pytest.raises(RuntimeError, match="fp32 only"):
        packed_linear.packed_linear(torch.randn(1, 16, dtype=torch.bfloat16), w, 32)
    with pytest.raises(RuntimeError, match="does not match"):
        packed_linear.packed_linear(torch.randn(1, 15), w, 32)


@pytest.mark.compile
def test_compiled_decoding_runs_the_kernel():
    """The profiler sees the dispatcher calls the compiled token graph makes: every linear of every
    decoded token (36 per token here: 2 + 4 x 3 + 2 blocks x 4, 3 adapters, the head) is the kernel."""
    from torch.profiler import profile

    model = tiny_model(seed=8)
    ids = torch.randint(1, 200, (2, 5))
    depth = Depth(3, init_scale=0.0)
    with torch.no_grad():
        want = generate(model, ids, depth, Stopping(4)).sequences
        generate(model, ids, depth, Stopping(4), compile=True)  # compiles outside the profile
        with profile() as prof:
            got = generate(model, ids, depth, Stopping(4), compile=True).sequences
    calls = sum(e.count for e in prof.key_averages() if e.key == "huginn::packed_linear")
    mc = model.model_config
    per_token = 4 * (mc.n_layers_in_prelude + 3 * mc.n_layers_in_recurrent_block + mc.n_layers_in_coda) + 3 + 1
    assert calls == 3 * per_token  # 3 decoded tokens after the prefill's
    assert torch.equal(got, want)


def test_without_a_compiler_decoding_falls_back_with_one_warning(tmp_path):
    """No C++ compiler (and no build cached for this name): `available()` is False after one logged
    warning line, no traceback, and `decode_layout` then stores weights column-major for BLAS."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import torch; from huginn.infer import packed_linear, compiled\n"
        "from tests.conftest import tiny_model\n"
        "print('available', packed_linear.available())\n"
        "m = tiny_model()\n"
        "with compiled.decode_layout(m):\n"
        "    w = m.lm_head.weight\n"
        "    print('column-major', w.stride() == (1, w.shape[0]), 'packed' in m.lm_head._buffers)\n"
    )
    env = {
        **__import__("os").environ,
        "PYTHONPATH": f"{REPO / 'src'}:{REPO}",
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
    }
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "available False" in proc.stdout and "column-major True False" in proc.stdout
    warning = [line for line in proc.stderr.splitlines() if "packed fp32 decoding kernel could not be built" in line]
    assert len(warning) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.compile
def test_generate_runs_without_gradients_even_where_they_are_enabled():
    """`generate` decodes under no_grad itself: with gradients enabled around it, compiled decoding
    neither traces a backward through the kernel (which has none) nor warns about one."""
    import warnings

    model = tiny_model(seed=9)
    ids = torch.randint(1, 200, (1, 4))
    with torch.enable_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate(model, ids, Depth(2, init_scale=0.0), Stopping(3), compile=True)
    assert not [w for w in caught if "autograd kernel" in str(w.message)]
    assert out.sequences.shape == (1, 7)
