"""Fused RMSNorm ops (plain, residual add + norm, gated): Triton kernels against the float64 torch spec.

Under TRITON_INTERPRET=1 on the CPU (tests/conftest.py). Errors are ||out - ref|| / ||ref|| against the spec run in
float64 on the same inputs: float32 inputs within 1e-5 (they land near 1e-7), bf16 within 1e-2 (outputs and
gradients in bf16 carry its 2^-8 rounding).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops.triton_support import DEVICE, count_launches, rel_err

from slimkv.layers.norm import GatedRMSNorm, RMSNorm  # noqa: E402
from slimkv.ops import norm as norm_ops  # noqa: E402
from slimkv.ops.norm import add_rms_norm, gated_rms_norm, rms_norm  # noqa: E402
from slimkv.ops.norm import triton as norm_triton  # noqa: E402

pytestmark = pytest.mark.triton
BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
EPS = 1e-5


def make(variant, shape, dtype, residual_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen).to(dtype)
    w = 1 + 0.1 * torch.randn(shape[-1], generator=gen)
    if variant == "rms":
        return (x, w)
    other = torch.randn(*shape, generator=gen)
    if variant == "gated_skip":
        # the DDTS output: x = GLA output, skip = conv output, skip_scale = D
        skip = torch.randn(*shape, generator=gen).to(dtype)
        return (x, other.to(dtype), skip, torch.randn(shape[-1], generator=gen), w)
    return (x, other.to(residual_dtype), w) if variant == "add" else (x, other.to(dtype), w)


def _gated_skip(x, z, skip, d, w, eps, out_dtype=None, backend="auto"):
    return gated_rms_norm(x, z, w, eps, out_dtype, skip=skip, skip_scale=d, backend=backend)


FNS = {"rms": rms_norm, "add": add_rms_norm, "gated": gated_rms_norm, "gated_skip": _gated_skip}


def run(variant, inputs, backend, out_dtype=None, out_weights=None):
    """Outputs and the gradients of sum_i <out_i, weight_i> with respect to every input."""
    inputs = [t.detach().to(DEVICE).requires_grad_(True) for t in inputs]
    outs = FNS[variant](*inputs, EPS, out_dtype=out_dtype, backend=backend)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if out_weights is None:
        out_weights = [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    loss = sum((o.double().cpu() * wt).sum() for o, wt in zip(outs, out_weights))
    return outs, torch.autograd.grad(loss, inputs), out_weights


def check(variant, inputs, dtype, out_dtype=None):
    outs, grads, weights = run(variant, inputs, "triton", out_dtype)
    ref_outs, ref_grads, _ = run(variant, [t.double() for t in inputs], "torch", None, weights)
    for got, ref, t in zip(outs, ref_outs, ("y", "s")):
        assert got.shape == ref.shape
        assert rel_err(got, ref) <= BOUNDS[dtype], (t, rel_err(got, ref))
    for got, inp, ref in zip(grads, inputs, ref_grads):
        assert got.dtype == inp.dtype and got.shape == inp.shape
        assert rel_err(got, ref) <= BOUNDS[dtype], rel_err(got, ref)
    return outs


@pytest.mark.parametrize("variant", ["rms", "add", "gated", "gated_skip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 7), (3, 5, 40), (7, 130), (2, 1, 1000)])
def test_matches_spec_outputs_and_gradients(nan_empty, variant, dtype, shape):
    outs = check(variant, make(variant, shape, dtype), dtype)
    # default output dtypes follow layers/norm.py (the weight's) and the residual stream's
    assert outs[0].dtype == torch.float32
    if variant == "add":
        assert outs[1].dtype == torch.float32


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 40), channels=st.integers(4, 300),
       variant=st.sampled_from(["rms", "add", "gated", "gated_skip"]),
       seed=st.integers(0, 99))
def test_random_shapes_float32(variant, rows, channels, seed):
    check(variant, make(variant, (rows, channels), torch.float32, seed=seed), torch.float32)


def test_bf16_output_skips_the_cast_and_rounds_once(nan_empty):
    x, z, w = make("gated", (4, 96), torch.bfloat16)
    y = gated_rms_norm(x, z, w, EPS, out_dtype=torch.bfloat16, backend="triton")
    spec = gated_rms_norm(x, z, w, EPS, backend="torch")
    assert y.dtype == torch.bfloat16
    # same float32 value, one rounding: equal to the spec's float32 output rounded to bf16, up to float32 noise
    assert (y.float() - spec.to(torch.bfloat16).float()).abs().max() <= 2**-7 * spec.abs().max()


def test_add_with_a_bf16_residual_rounds_the_sum_like_the_unfused_code(nan_empty):
    # residual_in_fp32 off: the stream is bf16, the sum is rounded to bf16 before it is normalised
    x, r, w = make("add", (6, 64), torch.bfloat16, residual_dtype=torch.bfloat16)
    y, s = add_rms_norm(x, r, w, EPS, backend="triton")
    y_ref, s_ref = add_rms_norm(x, r, w, EPS, backend="torch")
    assert s.dtype == torch.bfloat16
    # within one bf16 step of the unfused sum (equal on a GPU; Triton 3.6's interpreter truncates float32 -> bf16
    # where the GPU rounds to nearest)
    assert ((s.float() - s_ref.float()).abs() <= 2**-7 * s_ref.float().abs()).all()
    assert rel_err(y, y_ref) <= 1e-2


def test_gradient_through_normed_output_only(nan_empty):
    # the new residual unused: its gradient is None inside the backward (HAS_DS off)
    x, r, w = (t.requires_grad_(True) for t in make("add", (5, 48), torch.float32))
    y, _ = add_rms_norm(x, r, w, EPS, backend="triton")
    dx, dr, dw = torch.autograd.grad(y.sum(), (x, r, w))
    x64, r64, w64 = (t.detach().double().requires_grad_(True) for t in (x, r, w))
    y64, _ = add_rms_norm(x64, r64, w64, EPS, backend="torch")
    ref = torch.autograd.grad(y64.sum(), (x64, r64, w64))
    assert torch.equal(dx, dr)
    for got, want in zip((dx, dr, dw), ref):
        assert rel_err(got, want) <= 1e-5


def test_matches_the_layer_modules(nan_empty):
    norm, gated = RMSNorm(40), GatedRMSNorm(40)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        gated.weight.uniform_(0.5, 1.5)
    x, z = torch.randn(3, 7, 40), torch.randn(3, 7, 40)
    with torch.no_grad():
        assert rel_err(rms_norm(x, norm.weight, norm.eps, backend="triton"), norm(x)) <= 1e-6
        assert rel_err(gated_rms_norm(x, z, gated.weight, gated.eps, backend="triton"), gated(x, z)) <= 1e-6


def test_skip_term_matches_the_ddts_output_math(nan_empty):
    # layers/ddts.py: o = upcast(o) + upcast(D) * upcast(x_conv); y = out_norm(o, z)
    gated = GatedRMSNorm(48)
    D = torch.randn(48)
    o, x_conv, z = (torch.randn(2, 5, 48).to(torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        expected = gated(o.float() + D * x_conv.float(), z)
        y = gated_rms_norm(o, z, gated.weight, gated.eps, skip=x_conv, skip_scale=D, backend="triton")
    assert rel_err(y, expected) <= 1e-6
    with pytest.raises(ValueError, match="together"):
        gated_rms_norm(o, z, gated.weight, skip=x_conv)


def test_decode_rows_without_autograd(nan_empty):
    x, r, w = make("add", (4, 256), torch.bfloat16)
    with torch.no_grad():
        y, s = add_rms_norm(x, r, w, EPS, out_dtype=torch.bfloat16, backend="triton")
    y_ref, s_ref = add_rms_norm(x.double(), r.double(), w.double(), EPS, backend="torch")
    assert y.grad_fn is None and y.shape == (4, 256)
    assert rel_err(y, y_ref) <= 1e-2 and rel_err(s, s_ref) <= 1e-6


def test_triton_path_really_runs_and_auto_stays_on_torch_on_cpu():
    x, z, w = (t.requires_grad_(True) for t in make("gated", (3, 32), torch.float32))
    names = ("rms_norm_fwd_kernel", "rms_norm_bwd_kernel")
    with count_launches(norm_triton, *names) as launches:
        y = gated_rms_norm(x, z, w, EPS, backend="triton")
        y.sum().backward()
    assert launches == {"rms_norm_fwd_kernel": 1, "rms_norm_bwd_kernel": 1}
    assert type(y.grad_fn).__name__ == "GatedRMSNormFunctionBackward"
    if DEVICE == "cpu":
        with count_launches(norm_triton, *names) as launches:
            y = gated_rms_norm(x, z, w, EPS)
        assert launches == {"rms_norm_fwd_kernel": 0, "rms_norm_bwd_kernel": 0}
        assert torch.equal(y, norm_ops.gated_rms_norm_reference(x, z, w, EPS))


def test_bad_inputs_raise_value_error():
    x, w = make("rms", (2, 8), torch.float32)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm(x, w[:4])
    with pytest.raises(ValueError, match="gate must have"):
        gated_rms_norm(x, x[:1], w)
    with pytest.raises(ValueError, match="unknown backend"):
        rms_norm(x, w, backend="cuda")
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        rms_norm(x.double(), w.double(), backend="triton")
    # float64 under "auto" stays on the spec
    assert rms_norm(x.double(), w.double()).dtype == torch.float64
