"""Fused DDTS gate op: the Triton kernels against layers/ddts.py's math (the float64 torch spec).

Under TRITON_INTERPRET=1 on the CPU. Relative errors against the spec in float64 on the same inputs: float32 within
1e-5, bf16 keys within 1e-2 (their gradient is rounded to bf16).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops.triton_support import DEVICE, count_launches, rel_err

from slimkv.layers.ddts import DDTSMixer  # noqa: E402
from slimkv.ops.ddts_gates import ddts_gates, ddts_gates_reference  # noqa: E402
from slimkv.ops.ddts_gates import triton as gates_triton  # noqa: E402

pytestmark = pytest.mark.triton
BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def make(shape, m, k_dtype, gate_scale=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gt = gate_scale * torch.randn(*shape, 2 * m, generator=gen)
    # k as the layer has it: the second half of the [q | k] projection, a strided view
    qk = torch.randn(*shape, 2 * m, generator=gen).to(k_dtype)
    return gt, qk[..., m:]


def run(gt, k, backend, weights=None, out_dtype=None):
    gt, k = (t.detach().to(DEVICE).requires_grad_(True) for t in (gt, k))
    outs = ddts_gates(gt, k, 1e-12, out_dtype=out_dtype, backend=backend)
    weights = weights or [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    loss = sum((o.double().cpu() * w).sum() for o, w in zip(outs, weights))
    return outs, torch.autograd.grad(loss, (gt, k)), weights


def key_gradient_scale(gt, k, dk_gated):
    """||dk_gated * g ** tau / ||k|| ||: the size of dk before its projection removes the part along k. With few keys
    the projection can cancel most of it, so dk's error is measured against this, not against ||dk||."""
    gt, k = gt.double(), k.double()
    m = k.shape[-1]
    ig = F.softplus(gt[..., :m]).pow(torch.sigmoid(gt[..., m:]))
    return float((dk_gated * ig / k.norm(dim=-1, keepdim=True)).norm())


def check(gt, k, bound):
    outs, grads, weights = run(gt, k, "triton")
    ref_outs, ref_grads, _ = run(gt.double(), k.double(), "torch", weights)
    errors = {n: rel_err(a, b) for n, a, b in zip(("k_gated", "log_decay", "dgt"), outs + grads, ref_outs + ref_grads)}
    dk_err = float((grads[1].double().cpu() - ref_grads[1]).norm())
    errors["dk"] = dk_err / max(float(ref_grads[1].norm()), key_gradient_scale(gt, k, weights[0]))
    assert all(e <= bound for e in errors.values()), errors
    return outs, grads


@pytest.mark.parametrize("k_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, m", [((1,), 64), ((2, 9), 64), ((3, 5), 24), ((130,), 16)])
def test_matches_spec(nan_empty, shape, m, k_dtype):
    (kg, ld), (dgt, dk) = check(*make(shape, m, k_dtype), BOUNDS[k_dtype])
    assert kg.dtype == ld.dtype == dgt.dtype == torch.float32 and dk.dtype == k_dtype
    assert kg.shape == ld.shape == (*shape, m) and dgt.shape == (*shape, 2 * m)


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 70), m=st.integers(2, 80), seed=st.integers(0, 99))
def test_random_shapes_float32(rows, m, seed):
    check(*make((rows,), m, torch.float32, seed=seed), 1e-5)


def test_matches_the_mixer_gates(nan_empty):
    mixer = DDTSMixer(32, mem_size=16)
    x_conv = torch.randn(2, 5, mixer.inner_size)
    with torch.no_grad():
        q, k_ref, ld_ref = mixer._gates(x_conv)
        _, k = mixer.qk_proj(x_conv).split(16, dim=-1)
        gt = F.linear(x_conv, mixer.gate_proj.weight, mixer.gate_proj.bias)
        k_gated, log_decay = ddts_gates(gt, k, mixer.normalize_epsilon, backend="triton")
    assert rel_err(k_gated, k_ref) <= 1e-6 and rel_err(log_decay, ld_ref) <= 1e-6


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's sigmoid(-200)
def test_saturated_gates_stay_finite(nan_empty):
    # g^ down to -200: softplus underflows to 0 in float32 and g ** tau, done as pow, has an infinite derivative;
    # the kernel's exp(tau * log g) with log g = g^ there keeps the value exact and every gradient finite
    m = 16
    g_hat = torch.linspace(-200.0, 100.0, m).expand(3, m)
    t_hat = torch.tensor([-30.0, 0.0, 30.0])[:, None].expand(3, m)
    gt = torch.cat([g_hat, t_hat], -1).contiguous().requires_grad_(True)
    k = torch.randn(3, m, requires_grad=True)
    kg, ld = ddts_gates(gt, k, backend="triton")
    dgt, dk = torch.autograd.grad(kg.sum() + ld.sum(), (gt, k))
    assert all(torch.isfinite(t).all() for t in (kg, ld, dgt, dk))
    # against the same math in float64, where nothing underflows
    gt64, k64 = gt.detach().double(), k.detach().double()
    g, tau = F.softplus(gt64[:, :m]), torch.sigmoid(gt64[:, m:])
    assert rel_err(ld, -tau * g) <= 1e-6
    assert rel_err(kg, k64 / k64.norm(dim=-1, keepdim=True) * torch.exp(tau * torch.log(g))) <= 1e-6


def test_zero_key_uses_the_eps_floor(nan_empty):
    gt, _ = make((2,), 8, torch.float32)
    k = torch.zeros(2, 8)
    k[1] = torch.randn(8)
    check(gt, k, 1e-5)


def test_bf16_operands_for_the_gla_kernel(nan_empty):
    gt, k = make((4,), 64, torch.bfloat16)
    with torch.no_grad():
        kg, _ = ddts_gates(gt, k, out_dtype=torch.bfloat16, backend="triton")
        kg_ref, _ = ddts_gates_reference(gt.double(), k.double())
    assert kg.dtype == torch.bfloat16 and rel_err(kg, kg_ref) <= 1e-2


def test_triton_path_really_runs():
    gt, k = make((3,), 8, torch.float32)
    gt.requires_grad_(True)
    names = ("ddts_gates_fwd_kernel", "ddts_gates_bwd_kernel")
    with count_launches(gates_triton, *names) as launches:
        kg, ld = ddts_gates(gt, k, backend="triton")
        (kg.sum() + ld.sum()).backward()
    assert launches == {"ddts_gates_fwd_kernel": 1, "ddts_gates_bwd_kernel": 1}
    if DEVICE == "cpu":
        with count_launches(gates_triton, *names) as launches:
            ddts_gates(gt, k)
        assert launches == {"ddts_gates_fwd_kernel": 0, "ddts_gates_bwd_kernel": 0}


def test_bad_shapes_raise_value_error():
    gt, k = make((3,), 8, torch.float32)
    with pytest.raises(ValueError, match="gt must be"):
        ddts_gates(gt[..., :8], k)
    with pytest.raises(ValueError, match="gt must be"):
        ddts_gates(gt[:2], k)
