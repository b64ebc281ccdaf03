"""Sliding window + attention sinks (`window_attention(..., sinks=n)`): every backend against the spec, the spec
against the definition, gradients, and decode over a sink buffer plus a ring against full rows."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkv.ops.window_attn import window_attention, window_attention_reference, window_decode
from slimkv.ops.window_attn.flex import window_attention_flex

from .test_window_attn import HEAD_LAYOUTS, left_padding, make_inputs, naive_row


def test_reference_matches_definition_with_left_padding():
    q, k, v = make_inputs(2, 13, 4, 2, 2)
    pad = left_padding([13, 8], 13)
    for window, sinks in ((0, 1), (2, 3), (4, 20)):
        out = window_attention_reference(q, k, v, window, key_padding_mask=pad, sinks=sinks)
        for b in range(2):
            for i in range(13):
                for h in range(4):
                    want = naive_row(q, k, v, b, i, h, window, pad, sinks)
                    torch.testing.assert_close(out[b, i, h], want)


def test_sinks_change_only_rows_beyond_the_window():
    q, k, v = make_inputs(1, 20, 4, 1, 4)
    plain = window_attention_reference(q, k, v, 5)
    sunk = window_attention_reference(q, k, v, 5, sinks=2)
    # query i sees keys 0 and 1 anyway while i - 5 <= 0
    torch.testing.assert_close(sunk[:, :6], plain[:, :6], rtol=0, atol=0)
    assert (sunk[:, 6:] - plain[:, 6:]).abs().amax(dim=(0, 2, 3)).min() > 1e-3
    # no window: sinks mean nothing
    torch.testing.assert_close(window_attention_reference(q, k, v, None, sinks=3),
                               window_attention_reference(q, k, v, None), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 70), window=st.integers(0, 9), sinks=st.integers(1, 5), chunk=st.sampled_from([1, 4, 16]),
       layout=st.sampled_from(HEAD_LAYOUTS), padded=st.booleans(), seed=st.integers(0, 3))
def test_chunked_matches_reference(T, window, sinks, chunk, layout, padded, seed):
    H, Hk, Hv = layout
    q, k, v = make_inputs(2, T, H, Hk, Hv, seed=seed)
    pad = left_padding([T, max(1, T // 2)], T) if padded else None
    want = window_attention_reference(q, k, v, window, key_padding_mask=pad, sinks=sinks)
    got = window_attention(q, k, v, window, key_padding_mask=pad, backend="chunked", chunk_size=chunk, sinks=sinks)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("padded", [False, True])
def test_chunked_gradients_match_reference(padded):
    q, k, v = make_inputs(2, 37, 4, 2, 2)
    pad = left_padding([37, 20], 37) if padded else None
    grads = []
    for backend in ("reference", "chunked"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = window_attention(*leaves, 6, key_padding_mask=pad, backend=backend, chunk_size=8, sinks=3)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("padded", [False, True])
def test_flex_eager_matches_reference(padded):
    q, k, v = make_inputs(2, 40, 4, 2, 2, dtype=torch.float32)
    pad = left_padding([40, 23], 40) if padded else None
    want = window_attention_reference(q, k, v, 5, key_padding_mask=pad, sinks=4)
    got = window_attention_flex(q, k, v, 5, key_padding_mask=pad, sinks=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decode_over_sink_buffer_and_ring_reproduces_every_row():
    """The decode layout of a streaming head: a sink buffer (first `sinks` tokens) beside a ring of the last
    `window` tokens that are not sinks; window_decode over [sinks | ring | itself] equals the full row."""
    sinks, window = 2, 4
    q, k, v = make_inputs(1, 15, 4, 2, 2)
    full = window_attention_reference(q, k, v, window, sinks=sinks)
    for i in range(15):
        held = [j for j in range(i) if j < sinks] + [j for j in range(max(sinks, i - window), i)]
        keys = torch.stack([k[0, j] for j in held] + [k[0, i]])[None]
        values = torch.stack([v[0, j] for j in held] + [v[0, i]])[None]
        out = window_decode(q[:, i], keys, values, torch.ones(1, keys.shape[1], dtype=torch.bool))
        torch.testing.assert_close(out, full[:, i])


def test_bad_sinks_are_refused():
    q, k, v = make_inputs(1, 4, 2, 1, 2)
    with pytest.raises(ValueError, match="sinks must be a non-negative int"):
        window_attention(q, k, v, 2, sinks=-1)
