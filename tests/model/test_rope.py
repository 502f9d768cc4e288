"""RoPE: the eager complex form gives the bits of the real (published, compiled) form, whatever the
dtypes of the input and of the table (a model cast to bf16 holds its table in bf16)."""

from __future__ import annotations

import pytest
import torch

from huginn.infer.generate import Depth, Stopping, generate
from huginn.model.layers import rope_complex, rope_real, rope_table
from tests.conftest import tiny_model


@pytest.mark.parametrize(
    "x_dtype, table_dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.float64, torch.float64),
    ],
)
def test_complex_form_equals_the_real_form_bitwise(x_dtype, table_dtype):
    torch.manual_seed(0)
    rope = rope_table(16, 12, 10000.0)[:, 3:10].to(table_dtype)  # (1, 7, 1, 8, 2): positions 3..9
    x = (torch.randn(2, 7, 3, 16, dtype=torch.float64) * 5).to(x_dtype).requires_grad_()
    out_c = rope_complex(x, rope)
    out_r = rope_real(x, rope)
    assert out_c.dtype == x_dtype and torch.equal(out_c, out_r)
    g = torch.randn_like(out_c)
    (grad_c,) = torch.autograd.grad(out_c, x, g)
    (grad_r,) = torch.autograd.grad(out_r, x, g)
    if x_dtype == torch.float64:  # both compute in fp32 (`x.float()`); the fp64 backwards round differently
        torch.testing.assert_close(grad_c, grad_r, atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(grad_c, grad_r)


def test_a_model_cast_to_bf16_generates_eagerly():
    """The table follows `model.to(torch.bfloat16)`; eager attention must still rotate with it."""
    model = tiny_model(seed=1).to(torch.bfloat16)
    assert model.freqs_cis.dtype == torch.bfloat16
    ids = torch.randint(1, 200, (2, 5))
    with torch.no_grad():
        out = generate(model, ids, Depth(2, init_scale=0.0), Stopping(4))
    assert out.sequences.shape == (2, 9)
