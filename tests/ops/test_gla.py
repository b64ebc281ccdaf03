"""gla backends against the loop spec: outputs, final states and every gradient, in float64 on random shapes."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkv.ops.gla import chunked, gla, gla_step
from slimkv.ops.gla.chunked import gla_chunked
from slimkv.ops.gla.reference import gla_reference


def make_inputs(B, T, H, K, V, per_head, with_state, dtype=torch.float64, decay_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    decay_shape = (B, T, H) if per_head else (B, T, H, K)
    # log-sigmoid of a normal: the range a real gate produces, from ~-4 to ~0
    log_decay = decay_scale * torch.nn.functional.logsigmoid(torch.randn(decay_shape, generator=gen, dtype=dtype) + 2)
    state = torch.randn(B, H, K, V, generator=gen, dtype=dtype) if with_state else None
    return q, k, v, log_decay, state


def run_with_grads(fn, inputs, **kwargs):
    """Run fn on leaf copies of inputs; return output, final state and the gradients of a loss that uses both."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    q, k, v, log_decay, state = leaves
    o, final = fn(q, k, v, log_decay, None, state, True, **kwargs)
    # a random projection of o so every output element gets its own weight in the gradient
    weights = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype)
    ((o * weights).sum() + final.square().sum()).backward()
    return o, final, [None if x is None else x.grad for x in leaves]


def assert_same_as_reference(inputs, chunk_size, atol=1e-10, rtol=1e-8):
    o_ref, s_ref, g_ref = run_with_grads(gla_reference, inputs)
    o, s, g = run_with_grads(gla_chunked, inputs, chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(s, s_ref, atol=atol, rtol=rtol)
    for name, got, want in zip(("dq", "dk", "dv", "dlog_decay", "dinitial_state"), g, g_ref):
        if want is None:
            assert got is None
            continue
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


# T covers: one token, two, one less / exactly / one more than a chunk, and two chunks plus a tail
@pytest.mark.parametrize("T", [1, 2, 63, 64, 65, 130])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("per_head", [False, True])
def test_chunked_matches_reference(T, chunk_size, per_head):
    K = {16: 8, 32: 60, 64: 64}[chunk_size] if not per_head else 16
    inputs = make_inputs(B=2, T=T, H=2, K=K, V=12, per_head=per_head, with_state=T % 2 == 1, seed=T)
    assert_same_as_reference(inputs, chunk_size)


@settings(max_examples=12, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 80),
    H=st.integers(1, 3),
    K=st.sampled_from([8, 16, 60, 64]),
    V=st.sampled_from([5, 12, 32]),
    chunk_size=st.sampled_from([16, 32, 64, 7]),
    per_head=st.booleans(),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
    exact_sub_chunks=st.booleans(),
)
def test_chunked_matches_reference_random_shapes(B, T, H, K, V, chunk_size, per_head, with_state, seed,
                                                 exact_sub_chunks):
    inputs = make_inputs(B, T, H, K, V, per_head, with_state, seed=seed)
    # a negative limit sends every sub-chunk down the exact [c, c, K] path instead of the factored matmul
    limit = -1.0 if exact_sub_chunks else chunked.FACTOR_LIMIT
    original, chunked.FACTOR_LIMIT = chunked.FACTOR_LIMIT, limit
    try:
        assert_same_as_reference(inputs, chunk_size)
    finally:
        chunked.FACTOR_LIMIT = original


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_mixed_factored_and_exact_sub_chunks(chunk_size):
    # scattered -25 decays push some sub-chunks past FACTOR_LIMIT (exact path) while the rest stay factored
    q, k, v, log_decay, state = make_inputs(2, 130, 2, 16, 12, False, True, seed=3)
    strong = torch.rand(log_decay.shape, generator=torch.Generator().manual_seed(4)) < 0.01
    log_decay = torch.where(strong, torch.full_like(log_decay, -25.0), log_decay)
    # total decay of each aligned 16-token sub-chunk, weakest channel: both paths must occur
    sub_chunk_decay = log_decay[:, :128].unflatten(1, (8, chunked.SUB_CHUNK)).sum(2).amin(-1)
    assert (sub_chunk_decay < -chunked.FACTOR_LIMIT).any() and (sub_chunk_decay > -chunked.FACTOR_LIMIT).any()
    assert_same_as_reference((q, k, v, log_decay, state), chunk_size)


@pytest.mark.parametrize("per_head", [False, True])
def test_strong_decays_stay_finite_and_exact(per_head):
    # -30 per step: exp(+cumsum) over one chunk would be exp(1920), far past float32 and float64
    q, k, v, log_decay, state = make_inputs(2, 100, 2, 16, 8, per_head, True, dtype=torch.float32)
    log_decay = torch.full_like(log_decay, -30.0)
    log_decay[:, 40:50] = -0.01
    inputs64 = [x.double() for x in (q, k, v, log_decay, state)]
    o_ref, s_ref, _ = run_with_grads(gla_reference, inputs64)
    o, s, grads = run_with_grads(gla_chunked, (q, k, v, log_decay, state), chunk_size=64)
    assert all(torch.isfinite(x).all() for x in (o, s, *grads))
    torch.testing.assert_close(o.double(), o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=1e-4, rtol=1e-4)


def test_float32_close_to_float64_spec_and_dtypes(nan_empty):
    q, k, v, log_decay, state = make_inputs(2, 70, 3, 32, 16, False, True, dtype=torch.float64)
    o_ref, s_ref = gla_reference(q, k, v, log_decay, None, state, True)
    f32 = [x.float() for x in (q, k, v, log_decay, state)]
    o, s = gla(*f32[:4], initial_state=f32[4], output_final_state=True, backend="chunked", chunk_size=32)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(s.double(), s_ref, atol=2e-4, rtol=2e-4)
    # bfloat16 in, bfloat16 out; the state is still accumulated and returned in float32
    bf16 = [x.bfloat16() for x in f32[:4]]
    o_bf, s_bf = gla(*bf16, initial_state=f32[4], output_final_state=True, backend="chunked")
    assert o_bf.dtype == torch.bfloat16 and s_bf.dtype == torch.float32
    assert torch.isfinite(o_bf).all()


@pytest.mark.parametrize("per_head", [False, True])
def test_prefill_then_steps_equals_full_sequence(per_head):
    T, prefill = 50, 37
    q, k, v, log_decay, state = make_inputs(2, T, 2, 16, 24, per_head, True)
    o_full, s_full = gla_reference(q, k, v, log_decay, None, state, True)
    o_pre, s = gla(q[:, :prefill], k[:, :prefill], v[:, :prefill], log_decay[:, :prefill], initial_state=state,
                   output_final_state=True, backend="chunked", chunk_size=16)
    outs = [o_pre]
    for t in range(prefill, T):
        o_t, s = gla_step(q[:, t], k[:, t], v[:, t], log_decay[:, t], s)
        outs.append(o_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, dim=1), o_full, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(s, s_full, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_is_the_reference_at_one_token(dtype):
    q, k, v, log_decay, state = make_inputs(3, 1, 2, 8, 5, False, True, dtype=dtype)
    o_ref, s_ref = gla_reference(q, k, v, log_decay, 0.5, state, True)
    o, s = gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], state, 0.5)
    assert torch.equal(o, o_ref[:, 0]) and torch.equal(s, s_ref)
    assert s.dtype == dtype


def test_step_gradients_match_reference():
    inputs = make_inputs(2, 1, 2, 8, 5, True, True)

    def one_step(q, k, v, log_decay, scale, state, output_final_state):
        o, s = gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], state, scale)
        return o.unsqueeze(1), s

    o_ref, s_ref, g_ref = run_with_grads(gla_reference, inputs)
    o, s, g = run_with_grads(one_step, inputs)
    torch.testing.assert_close(o, o_ref)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want)


def test_zero_initial_state_is_the_default():
    q, k, v, log_decay, _ = make_inputs(1, 20, 1, 8, 4, False, False)
    zeros = torch.zeros(1, 1, 8, 4, dtype=torch.float64)
    o_none, s_none = gla_chunked(q, k, v, log_decay, None, None, True, chunk_size=16)
    o_zero, s_zero = gla_chunked(q, k, v, log_decay, None, zeros, True, chunk_size=16)
    torch.testing.assert_close(o_none, o_zero)
    torch.testing.assert_close(s_none, s_zero)
    assert gla_chunked(q, k, v, log_decay)[1] is None


def test_empty_sequence_keeps_the_state():
    q, k, v, log_decay, state = make_inputs(2, 0, 2, 8, 4, False, True)
    o, final = gla(q, k, v, log_decay, initial_state=state, output_final_state=True, backend="chunked")
    assert o.shape == (2, 0, 2, 4)
    torch.testing.assert_close(final, state)


def test_bad_inputs_raise_value_error():
    q, k, v, log_decay, state = make_inputs(2, 10, 2, 8, 4, False, True)
    bad_calls = {
        "k shape": lambda: gla(q, k[..., :4], v, log_decay),
        "q rank": lambda: gla(q[0], k[0], v[0], log_decay[0]),
        "v batch": lambda: gla(q, k, v[:1], log_decay),
        "decay shape": lambda: gla(q, k, v, log_decay[..., :3]),
        "state shape": lambda: gla(q, k, v, log_decay, initial_state=state[:, :1]),
        "backend": lambda: gla(q, k, v, log_decay, backend="cuda-magic"),
        "chunk size": lambda: gla(q, k, v, log_decay, backend="chunked", chunk_size=0),
        "step q rank": lambda: gla_step(q, k, v, log_decay, state),
        "step v": lambda: gla_step(q[:, 0], k[:, 0], v[:, 0, :1], log_decay[:, 0], state),
        "step decay": lambda: gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0, :, :2], state),
        "step state": lambda: gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], state[..., :2]),
    }
    for name, call in bad_calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"no ValueError for bad {name}")


def test_packed_sequences_need_the_triton_backend():
    q = torch.randn(1, 8, 1, 4)
    with pytest.raises(ValueError, match="cu_seqlens .* needs the triton backend"):
        gla(q, q, q, -torch.rand(1, 8, 1, 4), cu_seqlens=torch.tensor([0, 3, 8]), backend="chunked")
