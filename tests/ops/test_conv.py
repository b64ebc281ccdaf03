"""Causal depthwise short conv: F.conv1d path and step against the loop spec; prefill + steps = full sequence."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkv.ops.conv import causal_conv1d, causal_conv1d_reference, causal_conv1d_step


def make(B, T, C, K, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen, dtype=dtype)
    weight = torch.randn(C, K, generator=gen, dtype=dtype)
    bias = torch.randn(C, generator=gen, dtype=dtype)
    state = torch.randn(B, C, K - 1, generator=gen, dtype=dtype)
    return x, weight, bias, state


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 2, 5, 64])
def test_conv_matches_reference(T, K, with_bias, with_state):
    x, weight, bias, state = make(2, T, 6, K, seed=T * 10 + K)
    bias = bias if with_bias else None
    state = state if with_state else None
    y, final = causal_conv1d(x, weight, bias, state, output_final_state=True)
    y_ref, final_ref = causal_conv1d_reference(x, weight, bias, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_ref, rtol=0, atol=0)


def test_final_state_shifts_carried_inputs_when_short():
    x, weight, bias, state = make(1, 2, 3, 4)
    _, final = causal_conv1d(x, weight, bias, state, output_final_state=True)
    # K - 1 = 3 slots: the newest carried input, then the two new ones
    torch.testing.assert_close(final, torch.cat((state[..., 2:], x.transpose(1, 2)), dim=-1), rtol=0, atol=0)
    _, from_zeros = causal_conv1d(x, weight, bias, None, output_final_state=True)
    assert torch.equal(from_zeros[..., 0], torch.zeros(1, 3, dtype=x.dtype))


def test_matches_nn_conv1d_weight_layout():
    x, weight, bias, _ = make(2, 9, 5, 4)
    conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(weight.unsqueeze(1))
        conv.bias.copy_(bias)
    expected = conv(x.transpose(1, 2))[..., :9].transpose(1, 2)
    y, final = causal_conv1d(x, conv.weight.squeeze(1), conv.bias)
    assert final is None
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 30), split=st.integers(0, 30), K=st.integers(1, 5), B=st.integers(1, 3), seed=st.integers(0, 99)
)
def test_prefill_then_steps_equals_full_sequence(T, split, K, B, seed):
    split = min(split, T)
    x, weight, bias, state = make(B, T, 4, K, seed=seed)
    y_full, final_full = causal_conv1d(x, weight, bias, state, output_final_state=True)
    y_prefill, carried = causal_conv1d(x[:, :split], weight, bias, state, output_final_state=True)
    steps = []
    for t in range(split, T):
        y_t, carried = causal_conv1d_step(x[:, t], weight, bias, carried)
        steps.append(y_t)
    y_joined = torch.cat([y_prefill] + [s.unsqueeze(1) for s in steps], dim=1)
    torch.testing.assert_close(y_joined, y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(carried, final_full, rtol=0, atol=0)


def test_step_does_not_modify_state_and_keeps_dtypes():
    x, weight, bias, state = make(2, 1, 4, 4, dtype=torch.bfloat16)
    before = state.clone()
    y, new_state = causal_conv1d_step(x[:, 0], weight, bias, state)
    assert torch.equal(state, before)
    assert y.dtype == torch.bfloat16 and new_state.dtype == torch.bfloat16
    y_ref, _ = causal_conv1d_reference(x.double(), weight.double(), bias.double(), state.double())
    torch.testing.assert_close(y.double(), y_ref[:, 0], rtol=2e-2, atol=2e-2)


def test_gradients_match_reference():
    x, weight, bias, state = make(2, 11, 3, 4)
    grad_out = torch.randn(2, 11, 3, dtype=torch.float64)
    grads = []
    for fn in (causal_conv1d, causal_conv1d_reference):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias, state)]
        y, _ = fn(*leaves)
        grads.append(torch.autograd.grad(y, leaves, grad_out))
    for g_fast, g_ref in zip(*grads):
        assert g_ref.abs().max() > 0
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    x, weight, bias, state = make(2, 5, 4, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, weight.unsqueeze(1))
    with pytest.raises(ValueError, match="state"):
        causal_conv1d(x, weight, bias, state[..., :2])
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d_step(x[:, 0], weight, bias[:3], state)
