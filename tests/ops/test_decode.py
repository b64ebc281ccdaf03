"""The fused one-token decode kernels (ops/decode/triton.py) against their spec (ops/decode/reference.py).

Run on CPU under TRITON_INTERPRET=1 (tests/conftest.py). Each test draws fresh random shapes, includes edge sizes
(widths that are not a multiple of the block, one row, a ring with one slot) and checks the in-place state updates
as well as the outputs.
"""
from __future__ import annotations

import pytest
import torch

from slimkv.ops import decode
from slimkv.ops.decode import reference
from slimkv.ops.rope import rope_inv_freq

pytestmark = pytest.mark.triton
triton_kernels = pytest.importorskip("slimkv.ops.decode.triton")


# Triton's CPU interpreter rounds float32 -> bfloat16 toward zero (GPUs round to nearest even), so every bf16
# rounding point can be one unit (2^-8) off the spec's: bf16 tolerances here are a few units, float32 ones are tight.
BF16_TOL = 2.5e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,C,K", [(1, 16, 4), (2, 77, 4), (3, 40, 2), (1, 1030, 3)])
def test_conv_silu_step_updates_state_like_the_spec(dtype, B, C, K):
    x = torch.randn(B, 2 * C).to(dtype)[:, :C]  # a strided view, as the mixer passes it
    weight = torch.randn(C, K).to(dtype)
    bias = torch.randn(C).to(dtype)
    state = torch.randn(B, C, K - 1).to(dtype)
    want_state = state.clone()
    want = reference.conv_silu_step(x, weight, bias, want_state)
    got = triton_kernels.conv_silu_step(x, weight, bias, state)
    assert rel(got, want) < (1e-6 if dtype == torch.float32 else BF16_TOL)
    assert torch.equal(state, want_state)  # the shift is exact
    # several steps in a row keep agreeing (the state really is carried)
    for _ in range(K + 1):
        x = torch.randn(B, C).to(dtype)
        want = reference.conv_silu_step(x, weight, bias, want_state)
        got = triton_kernels.conv_silu_step(x, weight, bias, state)
        assert torch.equal(state, want_state) and rel(got, want) < (1e-6 if dtype == torch.float32 else BF16_TOL)


def ddts_inputs(B, m, e, r, dtype, strong=False):
    q = torch.randn(B, 2 * m).to(dtype)
    gates = torch.randn(B, 2 * m) * (4 if strong else 1) - (2 if strong else 0)
    xz = torch.randn(B, 2 * e).to(dtype)
    return dict(q=q[:, :m], k=q[:, m:], gates=gates, x=xz[:, :e], gate_hidden=torch.randn(B, r).to(dtype),
                up_weight=(0.3 * torch.randn(e, r)).to(dtype), up_bias=torch.randn(e).to(dtype),
                x_conv=torch.randn(B, e).to(dtype), z=xz[:, e:], skip=torch.randn(e).to(dtype),
                scale=m**-0.5, key_eps=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,m,e,r,strong", [(1, 16, 64, 16, False), (2, 24, 100, 20, True), (3, 64, 130, 32, False)])
def test_ddts_step_matches_the_spec_over_several_tokens(dtype, B, m, e, r, strong):
    state = torch.randn(B, m, e)
    want_state = state.clone()
    for _ in range(3):
        args = ddts_inputs(B, m, e, r, dtype, strong)
        want = reference.ddts_step(**args, state=want_state)
        got = triton_kernels.ddts_step(**args, state=state)
        assert got.dtype == torch.float32
        tol = 2e-6 if dtype == torch.float32 else BF16_TOL
        assert rel(got, want) < tol, rel(got, want)
        assert rel(state, want_state) < (2e-6 if dtype == torch.float32 else BF16_TOL)


def test_ddts_step_gates_survive_extreme_inputs():
    """softplus(-30) ~ 1e-13 must not round to 0 (log1p), and saturated temperatures stay finite."""
    B, m, e, r = 1, 16, 32, 16
    args = ddts_inputs(B, m, e, r, torch.float32)
    args["gates"] = torch.cat([torch.full((B, m), -30.0), torch.linspace(-100, 100, m)[None]], dim=1)
    state = torch.randn(B, m, e)
    want_state = state.clone()
    want = reference.ddts_step(**args, state=want_state)
    got = triton_kernels.ddts_step(**args, state=state)
    assert torch.isfinite(got).all() and rel(got, want) < 1e-5 and rel(state, want_state) < 1e-6


def window_inputs(B, H, Hk, D, S, dtype):
    return dict(q=torch.randn(B, H, D).to(dtype), k=torch.randn(B, Hk, D).to(dtype), v=torch.randn(B, H, D).to(dtype),
                inv_freq=rope_inv_freq(D, 10000.0), positions=torch.randint(0, 5000, (B,)),
                key_ring=torch.randn(B, S, Hk, D).to(dtype), value_ring=torch.randn(B, S, H, D).to(dtype),
                ring_valid=torch.rand(B, S) < 0.8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,Hk,D,S", [(1, 2, 1, 32, 1), (2, 4, 1, 32, 70), (1, 2, 2, 64, 300), (3, 3, 1, 32, 129)])
def test_window_step_matches_the_spec_and_writes_the_ring(dtype, B, H, Hk, D, S):
    inputs = window_inputs(B, H, Hk, D, S, dtype)
    want_ring = {n: inputs[n].clone() for n in ("key_ring", "value_ring", "ring_valid")}
    for step in range(3):
        slot = torch.tensor((7 * step + 3) % S)
        valid = torch.rand(B) < 0.9
        want = reference.window_step(**{**inputs, **want_ring}, slot=slot, valid=valid)
        got = triton_kernels.window_step(**inputs, slot=slot, valid=valid)
        tol = 2e-6 if dtype == torch.float32 else BF16_TOL
        assert rel(got, want) < tol, rel(got, want)
        assert torch.equal(inputs["ring_valid"], want_ring["ring_valid"])
        assert rel(inputs["key_ring"], want_ring["key_ring"]) < (1e-6 if dtype == torch.float32 else BF16_TOL)
        assert torch.equal(inputs["value_ring"], want_ring["value_ring"])
        for n in ("q", "k", "v"):
            inputs[n] = torch.randn_like(inputs[n].float()).to(dtype)
        inputs["positions"] = inputs["positions"] + 1


def test_window_step_with_nothing_visible_is_zero():
    inputs = window_inputs(2, 2, 1, 32, 5, torch.float32)
    inputs["ring_valid"].zero_()
    out = triton_kernels.window_step(**inputs, slot=torch.tensor(0), valid=torch.zeros(2, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))


def test_auto_backend_is_torch_on_cpu_and_triton_when_asked(monkeypatch):
    x = torch.randn(2, 8)
    assert not decode.use_triton(x, "auto") and decode.use_triton(x, "triton") and not decode.use_triton(x, "torch")
    with pytest.raises(ValueError, match="unknown backend"):
        decode.use_triton(x, "cuda")
    calls = []
    real = triton_kernels.conv_silu_step
    monkeypatch.setattr(triton_kernels, "conv_silu_step", lambda *a: calls.append(1) or real(*a))
    decode.conv_silu_step(x, torch.randn(8, 4), None, torch.zeros(2, 8, 3), backend="triton")
    decode.conv_silu_step(x, torch.randn(8, 4), None, torch.zeros(2, 8, 3), backend="auto")
    assert calls == [1]  # the triton path ran once, auto on CPU did not use it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,m2,e,r", [(1, 32, 64, 16), (3, 128, 130, 32), (2, 16, 1100, 20)])
def test_ddts_project_matches_the_three_projections(dtype, B, m2, e, r):
    xz = torch.randn(B, 2 * e).to(dtype)
    x_conv, x = torch.randn(B, e).to(dtype), xz[:, :e]
    weights = dict(qk_weight=(0.1 * torch.randn(m2, e)).to(dtype), gate_weight=(0.1 * torch.randn(m2, e)).to(dtype),
                   gate_bias=torch.randn(m2).to(dtype), hidden_weight=(0.1 * torch.randn(r, e)).to(dtype))
    supported = triton_kernels.ddts_project_supported(x, weights["qk_weight"], weights["hidden_weight"])
    assert supported == (r % triton_kernels.PROJECT_ROWS == 0)
    if not supported:
        return
    want = reference.ddts_project(x_conv, x, **weights)
    got = triton_kernels.ddts_project(x_conv, x, **weights)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert rel(g, w) < (1e-6 if dtype == torch.float32 else BF16_TOL)
    assert got[1].dtype == torch.float32  # the gates stay float32 in a bf16 model
