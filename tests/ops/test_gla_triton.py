"""Triton gla kernels against the loop spec, run on the CPU through Triton's interpreter (TRITON_INTERPRET=1).

Errors are relative: ||out - ref|| / ||ref|| against gla_reference in float64. Under the interpreter every dot is
exact float32 arithmetic (no tf32), so float32 inputs land near 1e-6 (up to 2e-5 for the decay gradient with very
negative log-decays); the bound 1e-4 leaves room for summation order and nothing else. Half precision: float16
operands (same kernels, same casts as bf16) within 1e-2. bf16 itself is checked on the GPU
(benchmarks/gpu/check_and_bench_gla.py): Triton 3.6's interpreter computes bf16 dots on raw bit patterns.
"""
from __future__ import annotations

import importlib
import os
import sys

# must be set before the kernels are decorated, i.e. before slimkv.ops.gla.triton is first imported
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
import triton.runtime.interpreter as triton_interpreter  # noqa: E402
from tests.triton_interpreter import patch_loop_bounds  # noqa: E402

pytestmark = pytest.mark.triton
patch_loop_bounds()


def _interpreted_kernels():
    """Import the kernel modules so that @triton.jit sees TRITON_INTERPRET=1 (reload if imported earlier)."""
    names = ["prep", "chunk_fwd", "chunk_bwd", "step", "autograd"]
    mods = [importlib.import_module(f"slimkv.ops.gla.triton.{n}") for n in names]
    if not isinstance(mods[0].gla_fwd_kernel_prep, triton_interpreter.InterpretedFunction):
        mods = [importlib.reload(m) for m in mods]
        importlib.reload(sys.modules["slimkv.ops.gla.triton"])
    return {n: m for n, m in zip(names, mods)}


KERNELS = _interpreted_kernels()
gla_triton = KERNELS["autograd"].gla_triton
gla_step_triton = KERNELS["step"].gla_step_triton

from slimkv.ops.gla import gla, gla_step  # noqa: E402
from slimkv.ops.gla.reference import gla_reference  # noqa: E402

F32_BOUND = 1e-4
HALF_BOUND = 1e-2


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in output"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def make_inputs(B, T, H, K, V, per_head, dtype=torch.float32, decay_scale=1.0, with_h0=True, num_states=None):
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = -decay_scale * torch.rand((B, T, H) if per_head else (B, T, H, K))
    h0 = torch.randn(num_states or B, H, K, V) if with_h0 else None
    return q, k, v, g, h0


def run_with_grads(fn, q, k, v, g, h0, out_w, state_w, cast, **kwargs):
    """o, final state and the gradients of <o, out_w> + <S_T, state_w> w.r.t. every input."""
    inputs = [cast(x).detach().requires_grad_(True) for x in (q, k, v, g)]
    h0_in = None if h0 is None else cast(h0).detach().requires_grad_(True)
    o, ht = fn(*inputs, None, h0_in, state_w is not None, **kwargs)
    loss = (o.double() * out_w).sum()
    if state_w is not None:
        loss = loss + (ht.double() * state_w).sum()
    grads = torch.autograd.grad(loss, inputs + ([h0_in] if h0_in is not None else []))
    return o, ht, grads


def check_against_reference(q, k, v, g, h0, final, bound):
    B, T, H, _ = q.shape
    out_w = torch.randn(B, T, H, v.shape[-1], dtype=torch.float64)
    state_w = torch.randn(B, H, q.shape[-1], v.shape[-1], dtype=torch.float64) if final else None
    o, ht, grads = run_with_grads(gla_triton, q, k, v, g, h0, out_w, state_w, cast=lambda x: x)
    o_ref, ht_ref, grads_ref = run_with_grads(gla_reference, q, k, v, g, h0, out_w, state_w, cast=lambda x: x.double())
    assert o.dtype == q.dtype and o.shape == o_ref.shape
    errors = {"o": rel_err(o, o_ref)}
    if final:
        assert ht.dtype == torch.float32
        errors["final_state"] = rel_err(ht, ht_ref)
    for name, got, ref in zip(["dq", "dk", "dv", "dg", "dh0"], grads, grads_ref):
        assert got.shape == ref.shape and got.dtype == (q.dtype if name in ("dq", "dk", "dv") else got.dtype)
        errors[name] = rel_err(got, ref)
    bad = {name: e for name, e in errors.items() if not e <= bound}
    assert not bad, f"errors over {bound}: {bad} (all: {errors})"


def test_interpreter_path_is_taken():
    assert os.environ["TRITON_INTERPRET"] == "1"
    for name in ("gla_fwd_kernel_prep", "gla_fwd_kernel_intra_channel"):
        assert isinstance(getattr(KERNELS["prep"], name), triton_interpreter.InterpretedFunction)
    assert isinstance(KERNELS["chunk_fwd"].gla_fwd_kernel_state, triton_interpreter.InterpretedFunction)
    assert isinstance(KERNELS["step"].gla_step_kernel, triton_interpreter.InterpretedFunction)


@pytest.mark.parametrize(
    "B, T, H, K, V, per_head, with_h0, final",
    [
        (1, 1, 1, 16, 16, False, True, True),
        (2, 17, 2, 16, 64, False, True, True),
        (1, 64, 1, 32, 16, False, False, False),
        (2, 100, 1, 32, 64, False, True, True),
        (1, 1, 2, 16, 16, True, True, True),
        (2, 17, 2, 32, 16, True, False, True),
        (1, 64, 1, 16, 64, True, True, False),
        (2, 100, 2, 16, 16, True, True, True),
    ],
)
def test_matches_reference_float32(nan_empty, B, T, H, K, V, per_head, with_h0, final):
    q, k, v, g, h0 = make_inputs(B, T, H, K, V, per_head, with_h0=with_h0)
    check_against_reference(q, k, v, g, h0, final, F32_BOUND)


@pytest.mark.parametrize("per_head", [False, True])
def test_very_negative_log_decay_stays_finite(nan_empty, per_head):
    # log-decays down to -40 per step: exp(-cumsum) over one chunk would overflow float32 many times over
    q, k, v, g, h0 = make_inputs(1, 100, 1, 16, 16, per_head, decay_scale=40.0)
    check_against_reference(q, k, v, g, h0, True, F32_BOUND)


@pytest.mark.parametrize("per_head", [False, True])
def test_matches_reference_float16(nan_empty, per_head):
    q, k, v, g, h0 = make_inputs(2, 100, 1, 32, 64, per_head, dtype=torch.float16)
    check_against_reference(q, k, v, g, h0, True, HALF_BOUND)


@pytest.mark.parametrize("per_head", [False, True])
def test_packed_sequences_restart_state(nan_empty, per_head):
    lengths = [17, 64, 1, 50]
    T, H, K, V = sum(lengths), 2, 16, 16
    q, k, v, g, h0 = make_inputs(1, T, H, K, V, per_head, num_states=len(lengths))
    cu = torch.tensor([0] + lengths).cumsum(0)
    out_w = torch.randn(1, T, H, V, dtype=torch.float64)
    state_w = torch.randn(len(lengths), H, K, V, dtype=torch.float64)
    o, ht, grads = run_with_grads(gla_triton, q, k, v, g, h0, out_w, state_w, cast=lambda x: x, cu_seqlens=cu)

    def reference_per_segment(q, k, v, g, scale, h0, final):
        outs, states = [], []
        for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            o_i, s_i = gla_reference(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], scale, h0[i : i + 1], final)
            outs.append(o_i)
            states.append(s_i)
        return torch.cat(outs, 1), torch.cat(states, 0)

    o_ref, ht_ref, grads_ref = run_with_grads(
        reference_per_segment, q, k, v, g, h0, out_w, state_w, cast=lambda x: x.double())
    errors = {"o": rel_err(o, o_ref), "final_state": rel_err(ht, ht_ref)}
    errors.update({n: rel_err(a, b) for n, a, b in zip(["dq", "dk", "dv", "dg", "dh0"], grads, grads_ref)})
    assert all(e <= F32_BOUND for e in errors.values()), errors


def test_no_grad_forward_and_dispatcher(nan_empty):
    q, k, v, g, h0 = make_inputs(2, 33, 2, 16, 16, False)
    with torch.no_grad():
        o, ht = gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="triton")
    o_ref, ht_ref = gla_reference(q.double(), k.double(), v.double(), g.double(), None, h0.double(), True)
    assert rel_err(o, o_ref) <= F32_BOUND and rel_err(ht, ht_ref) <= F32_BOUND


@pytest.mark.parametrize("per_head", [False, True])
def test_decode_step_matches_spec_and_continues_prefill(nan_empty, per_head):
    B, T, H, K, V = 2, 20, 2, 16, 64
    q, k, v, g, h0 = make_inputs(B, T + 1, H, K, V, per_head)
    _, state = gla_triton(q[:, :T], k[:, :T], v[:, :T], g[:, :T], None, h0, True)
    o_step, new_state = gla_step_triton(q[:, T], k[:, T], v[:, T], g[:, T], state)
    o_spec, state_spec = gla_step(q[:, T].double(), k[:, T].double(), v[:, T].double(), g[:, T].double(),
                                  state.double())
    assert rel_err(o_step, o_spec) <= F32_BOUND and rel_err(new_state, state_spec) <= F32_BOUND
    o_full, ht_full = gla_reference(q.double(), k.double(), v.double(), g.double(), None, h0.double(), True)
    assert rel_err(o_step, o_full[:, T]) <= F32_BOUND and rel_err(new_state, ht_full) <= F32_BOUND
    kept = state.clone()
    o_inplace, same = gla_step_triton(q[:, T], k[:, T], v[:, T], g[:, T], state, inplace=True)
    assert same.data_ptr() == state.data_ptr() and torch.equal(o_inplace, o_step)
    assert torch.equal(state, new_state) and not torch.equal(kept, state)


def test_bad_arguments_raise_value_error():
    q, k, v, g, h0 = make_inputs(2, 8, 1, 16, 16, False)
    with pytest.raises(ValueError, match="log_decay"):
        gla_triton(q, k, v, g[..., :3])
    with pytest.raises(ValueError, match="cu_seqlens"):
        gla_triton(q, k, v, g, cu_seqlens=torch.tensor([0, 8, 16]))
    with pytest.raises(ValueError, match="initial_state"):
        gla_triton(q, k, v, g, initial_state=h0[:1])
    with pytest.raises(ValueError, match="state"):
        gla_step_triton(q[:, 0], k[:, 0], v[:, 0], g[:, 0], h0.double())
