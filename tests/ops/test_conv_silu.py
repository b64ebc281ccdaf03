"""Fused causal depthwise conv + bias + SiLU: the Triton kernels against the loop spec (ops/conv) in float64.

Under TRITON_INTERPRET=1 on the CPU. Covers carried initial state, the final state (and its gradient), T = 1 decode,
T shorter than the state, time and channel lengths that are not multiples of the blocks, strided inputs (x as one half
of the fused projection), every gradient. Bounds: float32 1e-5, bf16 1e-2.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops.triton_support import DEVICE, count_launches, rel_err

from slimkv.ops.conv import causal_conv1d_reference, causal_conv1d_silu, causal_conv1d_step  # noqa: E402
from slimkv.ops.conv import triton as conv_triton  # noqa: E402

pytestmark = pytest.mark.triton
BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def spec(x, weight, bias, state):
    y, final = causal_conv1d_reference(x, weight, bias, state)
    return F.silu(y), final


def make(B, T, C, K, dtype, with_state=True, with_bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # x as the mixer has it: the first half of the fused [x | z] projection (rows 2C apart)
    x = torch.randn(B, T, 2 * C, generator=gen).to(dtype)[..., :C]
    weight = 0.5 * torch.randn(C, K, generator=gen)
    bias = torch.randn(C, generator=gen) if with_bias else None
    # the carried state in x's dtype, as a cache written by this op holds it
    state = torch.randn(B, C, K - 1, generator=gen).to(dtype) if with_state else None
    return x, weight, bias, state


def outputs_and_grads(fn, inputs, weights=None):
    inputs = [None if t is None else t.detach().to(DEVICE).requires_grad_(True) for t in inputs]
    y, final = fn(*inputs)
    weights = weights or [torch.randn(y.shape, dtype=torch.float64), torch.randn(final.shape, dtype=torch.float64)]
    loss = (y.double().cpu() * weights[0]).sum() + (final.double().cpu() * weights[1]).sum()
    used = [t for t in inputs if t is not None]
    return (y, final), torch.autograd.grad(loss, used), weights


def check(inputs, bound):
    triton_fn = lambda *a: causal_conv1d_silu(*a, output_final_state=True, backend="triton")  # noqa: E731
    (y, final), grads, weights = outputs_and_grads(triton_fn, inputs)
    (y_ref, final_ref), grads_ref, _ = outputs_and_grads(spec, [None if t is None else t.double() for t in inputs],
                                                         weights)
    x = inputs[0]
    assert y.dtype == x.dtype and final.dtype == x.dtype and final.shape == final_ref.shape
    errors = {"y": rel_err(y, y_ref)}
    if final.numel():
        errors["final"] = rel_err(final, final_ref)
    names = [n for n, t in zip(("dx", "dweight", "dbias", "dstate"), inputs) if t is not None]
    for name, got, ref, inp in zip(names, grads, grads_ref, [t for t in inputs if t is not None]):
        assert got.dtype == inp.dtype and got.shape == inp.shape
        errors[name] = rel_err(got, ref)
    assert all(e <= bound for e in errors.values()), errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B, T, C, K", [(2, 1, 5, 4), (2, 2, 5, 4), (1, 37, 130, 4), (2, 64, 16, 4),
                                        (2, 40, 7, 3), (1, 5, 3, 1)])
def test_matches_spec_with_carried_state(nan_empty, B, T, C, K, dtype):
    check(make(B, T, C, K, dtype, with_state=K > 1), BOUNDS[dtype])


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 70), C=st.integers(1, 40), K=st.integers(1, 5),
       with_state=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 99))
def test_random_shapes_float32(B, T, C, K, with_state, with_bias, seed):
    check(make(B, T, C, K, torch.float32, with_state and K > 1, with_bias, seed), 1e-5)


def test_prefill_then_decode_steps_equal_the_full_sequence(nan_empty):
    x, weight, bias, state = make(2, 12, 9, 4, torch.float32)
    full, full_state = causal_conv1d_silu(x, weight, bias, state, True, backend="triton")
    with torch.no_grad():
        y, s = causal_conv1d_silu(x[:, :7], weight, bias, state, True, backend="triton")
        outs = [y]
        for t in range(7, 12):
            # one-token decode is the same op with T = 1, one launch
            y_t, s = causal_conv1d_silu(x[:, t : t + 1], weight, bias, s, True, backend="triton")
            outs.append(y_t)
    assert rel_err(torch.cat(outs, 1), full) <= 1e-6 and torch.equal(s, full_state)
    # and the same numbers as the unfused decode step followed by SiLU
    y_step, s_step = causal_conv1d_step(x[:, 11], weight, bias, causal_conv1d_silu(x[:, :11], weight, bias, state,
                                                                                   True, backend="triton")[1])
    assert rel_err(F.silu(y_step), full[:, 11]) <= 1e-6 and torch.equal(s_step, full_state)


def test_matches_the_torch_backend_in_bf16(nan_empty):
    # the "torch" backend is the unfused layer code (F.conv1d in bf16, then SiLU): same numbers up to bf16 rounding
    x, weight, bias, state = make(2, 33, 24, 4, torch.bfloat16)
    y, final = causal_conv1d_silu(x, weight, bias, state, True, backend="triton")
    y_ref, final_ref = causal_conv1d_silu(x, weight, bias, state, True, backend="torch")
    assert rel_err(y, y_ref) <= 1e-2 and torch.equal(final, final_ref)


def test_triton_path_really_runs():
    x, weight, bias, state = make(1, 9, 4, 4, torch.float32)
    x.requires_grad_(True)
    names = ("conv_silu_fwd_kernel", "conv_silu_bwd_kernel")
    with count_launches(conv_triton, *names) as launches:
        y, _ = causal_conv1d_silu(x, weight, bias, state, backend="triton")
        y.sum().backward()
    assert launches == {"conv_silu_fwd_kernel": 1, "conv_silu_bwd_kernel": 1}
    if DEVICE == "cpu":
        with count_launches(conv_triton, *names) as launches:
            causal_conv1d_silu(x, weight, bias, state)
        assert launches == {"conv_silu_fwd_kernel": 0, "conv_silu_bwd_kernel": 0}


def test_bad_inputs_raise_value_error():
    x, weight, bias, state = make(1, 9, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="state must be"):
        causal_conv1d_silu(x, weight, bias, state[..., :2])
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d_silu(x[0], weight, bias)
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        causal_conv1d_silu(x.double(), weight.double(), backend="triton")
