"""Fused SwiGLU: the Triton kernels against layers/ffn.py's math (the float64 torch spec), under TRITON_INTERPRET=1."""
from __future__ import annotations

import pytest
import torch

from tests.ops.triton_support import DEVICE, count_launches, rel_err

from slimkv.layers.ffn import SwiGLU  # noqa: E402
from slimkv.ops.swiglu import swiglu  # noqa: E402
from slimkv.ops.swiglu import triton as swiglu_triton  # noqa: E402

pytestmark = pytest.mark.triton
BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2), (3, 5, 600), (17, 514), (2, 1, 96)])
def test_matches_spec(nan_empty, shape, dtype):
    u = torch.randn(*shape).to(dtype).to(DEVICE).requires_grad_(True)
    y = swiglu(u, backend="triton")
    dy = torch.randn(y.shape, dtype=torch.float64)
    (du,) = torch.autograd.grad(y, u, dy.to(dtype).to(DEVICE))
    u64 = u.detach().cpu().double().requires_grad_(True)
    y64 = swiglu(u64, backend="torch")
    (du64,) = torch.autograd.grad(y64, u64, dy.to(dtype).double())
    assert y.dtype == du.dtype == dtype and y.shape == (*shape[:-1], shape[-1] // 2) and du.shape == u.shape
    assert rel_err(y, y64) <= BOUNDS[dtype] and rel_err(du, du64) <= BOUNDS[dtype]


def test_matches_the_ffn_layer(nan_empty):
    ffn = SwiGLU(24, 40)
    x = torch.randn(3, 7, 24)
    with torch.no_grad():
        assert rel_err(ffn.down_proj(swiglu(ffn.fc(x), backend="triton")), ffn(x)) <= 1e-6


def test_triton_path_really_runs():
    u = torch.randn(4, 64, requires_grad=True)
    names = ("swiglu_fwd_kernel", "swiglu_bwd_kernel")
    with count_launches(swiglu_triton, *names) as launches:
        swiglu(u, backend="triton").sum().backward()
    assert launches == {"swiglu_fwd_kernel": 1, "swiglu_bwd_kernel": 1}
    if DEVICE == "cpu":
        with count_launches(swiglu_triton, *names) as launches:
            swiglu(u)
        assert launches == {"swiglu_fwd_kernel": 0, "swiglu_bwd_kernel": 0}


def test_odd_width_raises_value_error():
    with pytest.raises(ValueError, match="2f"):
        swiglu(torch.randn(2, 7))
