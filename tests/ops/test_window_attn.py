"""Windowed attention: every backend against the dense-mask spec; decode over a ring buffer against full rows."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkv.ops.window_attn import (
    window_attention,
    window_attention_reference,
    window_cache_slots,
    window_decode,
)
from slimkv.ops.window_attn.chunked import window_attention_chunked
from slimkv.ops.window_attn.flex import window_attention_flex

# (H, Hk, Hv): SW-SKA shared key with multi-value, shared key with fewer values, GQA, MHA
HEAD_LAYOUTS = [(4, 1, 4), (4, 1, 2), (4, 2, 2), (4, 4, 4)]


def make_inputs(B, T, H, Hk, Hv, D=8, Dv=6, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=gen, dtype=dtype)
    k = torch.randn(B, T, Hk, D, generator=gen, dtype=dtype)
    v = torch.randn(B, T, Hv, Dv, generator=gen, dtype=dtype)
    return q, k, v


def left_padding(lengths, T):
    """[B, T] bool with each row's real tokens at the right end."""
    positions = torch.arange(T).unsqueeze(0)
    return positions >= (T - torch.tensor(lengths)).unsqueeze(1)


def naive_row(q, k, v, b, i, h, window, pad, sinks=0):
    """Output of one query, written from the definition with a Python loop over visible keys: keys j <= i that are
    real and either within the window (None: unbounded) or among the row's first `sinks` real keys."""
    H, Hk, Hv = q.shape[2], k.shape[2], v.shape[2]
    real = [j for j in range(q.shape[1]) if pad is None or pad[b, j]]
    keys = [j for j in real if j <= i and (window is None or i - j <= window or real.index(j) < sinks)]
    if not keys:
        return torch.zeros(v.shape[-1], dtype=v.dtype)
    scores = torch.stack([q[b, i, h] @ k[b, j, h // (H // Hk)] for j in keys]) * q.shape[-1] ** -0.5
    weights = torch.softmax(scores, dim=0)
    return sum(w * v[b, j, h // (H // Hv)] for w, j in zip(weights, keys))


def test_reference_matches_definition_row_by_row():
    q, k, v = make_inputs(2, 12, 4, 1, 2)
    pad = left_padding([12, 7], 12)
    for window in (0, 3, None):
        out = window_attention_reference(q, k, v, window, key_padding_mask=pad)
        for b in range(2):
            for i in range(12):
                for h in range(4):
                    torch.testing.assert_close(out[b, i, h], naive_row(q, k, v, b, i, h, window, pad))


@pytest.mark.parametrize("H,Hk,Hv", HEAD_LAYOUTS)
@pytest.mark.parametrize("window", [0, 1, 7, 64, None])
@pytest.mark.parametrize("T", [1, 5, 64, 129])
def test_chunked_matches_reference(T, window, H, Hk, Hv):
    q, k, v = make_inputs(2, T, H, Hk, Hv, seed=T)
    expected = window_attention_reference(q, k, v, window)
    got = window_attention_chunked(q, k, v, window, chunk_size=16)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window", [0, 7, None])
@pytest.mark.parametrize("T", [5, 129])
def test_chunked_with_padding_matches_reference(T, window):
    q, k, v = make_inputs(3, T, 4, 1, 4, seed=T)
    # left padding of different lengths, one row fully padded
    pad = left_padding([T, max(1, T // 3), 0], T)
    expected = window_attention_reference(q, k, v, window, key_padding_mask=pad)
    got = window_attention(q, k, v, window, key_padding_mask=pad, backend="chunked", chunk_size=32)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not got.isnan().any()
    assert got[2].abs().max() == 0


def test_scattered_padding_and_explicit_scale():
    q, k, v = make_inputs(2, 40, 4, 2, 4)
    gen = torch.Generator().manual_seed(3)
    pad = torch.rand(2, 40, generator=gen) > 0.4
    for window in (0, 5, None):
        expected = window_attention_reference(q, k, v, window, scale=0.3, key_padding_mask=pad)
        got = window_attention_chunked(q, k, v, window, scale=0.3, key_padding_mask=pad, chunk_size=16)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # with window 0 a padded query sees only itself, a padded key: its row is exactly zero
    no_key_row = window_attention_chunked(q, k, v, 0, key_padding_mask=pad)[~pad]
    assert no_key_row.abs().max() == 0


@pytest.mark.parametrize("window,pad_lengths", [(7, None), (None, [64, 40]), (3, [30, 64])])
def test_chunked_gradients_match_reference(window, pad_lengths):
    T = 64
    q, k, v = make_inputs(2, T, 4, 1, 4)
    pad = None if pad_lengths is None else left_padding(pad_lengths, T)
    grad_out = torch.randn(2, T, 4, 6, dtype=torch.float64)
    grads = []
    for fn in (window_attention_reference, lambda *a, **kw: window_attention_chunked(*a, **kw, chunk_size=16)):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, window, key_padding_mask=pad)
        grads.append(torch.autograd.grad(out, leaves, grad_out))
    for name, g_ref, g_chunked in zip("qkv", *grads):
        assert g_ref.abs().max() > 0, name
        torch.testing.assert_close(g_chunked, g_ref, rtol=1e-9, atol=1e-10, msg=f"d{name}")


def test_low_precision_output_dtype_and_accuracy():
    q, k, v = make_inputs(2, 70, 4, 1, 4, D=16, dtype=torch.bfloat16)
    got = window_attention(q, k, v, window=9, backend="chunked", chunk_size=32)
    assert got.dtype == torch.bfloat16
    expected = window_attention_reference(q.double(), k.double(), v.double(), 9)
    rel = (got.double() - expected).norm() / expected.norm()
    assert rel < 1e-2


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 50),
    groups=st.sampled_from([(1, 1, 1), (2, 1, 2), (3, 3, 1), (2, 2, 2)]),
    window=st.one_of(st.none(), st.integers(0, 60)),
    chunk=st.integers(1, 40),
    padded=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_chunked_property(B, T, groups, window, chunk, padded, seed):
    # H = Hk * a = Hv * b for the group factors below
    Hk, key_group, value_group = 2, groups[0], groups[1] * groups[2]
    H = Hk * key_group
    Hv = H // value_group if H % value_group == 0 else H
    q, k, v = make_inputs(B, T, H, Hk, Hv, seed=seed)
    pad = (torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) > 0.3) if padded else None
    expected = window_attention_reference(q, k, v, window, key_padding_mask=pad)
    got = window_attention_chunked(q, k, v, window, key_padding_mask=pad, chunk_size=chunk)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window", [0, 7, None])
@pytest.mark.parametrize("H,Hk,Hv", [(4, 1, 4), (4, 2, 2)])
def test_ring_buffer_decode_matches_full_sequence(window, H, Hk, Hv):
    B, T = 2, 40
    q, k, v = make_inputs(B, T, H, Hk, Hv)
    pad = left_padding([T, 23], T)
    full = window_attention_reference(q, k, v, window, key_padding_mask=pad)
    slots = T if window is None else window_cache_slots(window)
    k_cache = torch.zeros(B, slots, Hk, k.shape[-1], dtype=k.dtype)
    v_cache = torch.zeros(B, slots, Hv, v.shape[-1], dtype=v.dtype)
    valid = torch.zeros(B, slots, dtype=torch.bool)
    for t in range(T):
        # the token at position t overwrites the one that just fell out of the window
        slot = t % slots
        k_cache[:, slot], v_cache[:, slot], valid[:, slot] = k[:, t], v[:, t], pad[:, t]
        step = window_decode(q[:, t], k_cache, v_cache, valid)
        torch.testing.assert_close(step, full[:, t], rtol=1e-10, atol=1e-10, msg=f"t={t}")


def test_decode_without_valid_slots_is_zero_and_slot_order_free():
    q, k, v = make_inputs(2, 6, 4, 1, 4)
    valid = torch.tensor([[True, False, True, True, False, True], [False] * 6])
    out = window_decode(q[:, 0], k[:, :, :1], v, valid)
    assert out[1].abs().max() == 0 and not out.isnan().any()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = window_decode(q[:, 0], k[:, perm, :1], v[:, perm], valid[:, perm])
    torch.testing.assert_close(permuted, out, rtol=1e-12, atol=1e-12)
    assert out.dtype == torch.float64


def test_prefill_then_decode_continues_the_sequence():
    window, T_prompt, T = 5, 9, 16
    q, k, v = make_inputs(1, T, 4, 1, 4)
    full = window_attention(q, k, v, window, backend="chunked")
    prefill = window_attention(q[:, :T_prompt], k[:, :T_prompt], v[:, :T_prompt], window, backend="chunked")
    torch.testing.assert_close(prefill, full[:, :T_prompt], rtol=1e-12, atol=1e-12)
    slots = window_cache_slots(window)
    # the prompt's last `slots` tokens land where a ring buffer written from position 0 would hold them
    k_cache = torch.zeros(1, slots, 1, 8, dtype=k.dtype)
    v_cache = torch.zeros(1, slots, 4, 6, dtype=v.dtype)
    valid = torch.zeros(1, slots, dtype=torch.bool)
    for t in range(max(0, T_prompt - slots), T_prompt):
        k_cache[:, t % slots], v_cache[:, t % slots], valid[:, t % slots] = k[:, t], v[:, t], True
    for t in range(T_prompt, T):
        k_cache[:, t % slots], v_cache[:, t % slots], valid[:, t % slots] = k[:, t], v[:, t], True
        torch.testing.assert_close(window_decode(q[:, t], k_cache, v_cache, valid), full[:, t], rtol=1e-10, atol=1e-10)


# torch 2.13 runs flex_attention eagerly on CPU (dense scores, no fused kernel): enough to check the mask_mod,
# the block mask and the head broadcasting against the spec. The compiled CUDA kernel is checked by
# benchmarks/gpu/window_attn.py on a GPU.
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("H,Hk,Hv", [(4, 1, 4), (4, 2, 2), (4, 1, 2)])
@pytest.mark.parametrize("window,T", [(0, 5), (7, 129), (None, 64)])
def test_flex_eager_matches_reference(window, T, H, Hk, Hv):
    q, k, v = make_inputs(2, T, H, Hk, Hv, D=16, Dv=16, dtype=torch.float32, seed=T)
    pad = left_padding([T, T // 2], T)
    for mask in (None, pad):
        expected = window_attention_reference(q, k, v, window, key_padding_mask=mask)
        got = window_attention_flex(q, k, v, window, key_padding_mask=mask, compiled=False)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bucket_lengths_are_powers_of_two_from_one_block():
    from slimkv.ops.window_attn.flex import bucket_length

    assert [bucket_length(T) for T in (1, 127, 128, 129, 1000, 1024, 1025, 8000)] == \
        [128, 128, 128, 256, 1024, 1024, 2048, 8192]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window,sinks", [(0, 0), (7, 0), (5, 3), (None, 0)])
@pytest.mark.parametrize("T", [1, 5, 129, 200])
def test_flex_padded_to_its_bucket_equals_the_spec(window, sinks, T, monkeypatch):
    """A no-grad call runs at a power-of-two length (ops/window_attn/flex.py): the appended keys stay invisible to
    every real query and the appended rows are dropped, with and without left padding and sinks."""
    from slimkv.ops.window_attn import flex

    built = []
    real_mask = flex.window_block_mask
    monkeypatch.setattr(flex, "window_block_mask", lambda T, *a, **kw: built.append(T) or real_mask(T, *a, **kw))
    q, k, v = make_inputs(2, T, 4, 1, 4, D=16, Dv=16, dtype=torch.float32, seed=T)
    pad = left_padding([T, max(1, T // 2)], T)
    for mask in (None, pad):
        expected = window_attention_reference(q, k, v, window, key_padding_mask=mask, sinks=sinks)
        got = window_attention_flex(q, k, v, window, key_padding_mask=mask, compiled=False, sinks=sinks, bucket=True)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the block masks were built at the bucket's length, not at T
    assert built == [flex.bucket_length(T)] * 2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_no_grad_calls_of_many_lengths_share_a_few_compiled_lengths(monkeypatch):
    """The mechanism behind the padding: evaluation lengths 130..1000 reach the kernel as 3 lengths, not 6; with
    autograd on (training) the length is kept."""
    from slimkv.ops.window_attn import flex

    seen = []
    real_mask = flex.window_block_mask
    monkeypatch.setattr(flex, "window_block_mask", lambda T, *a, **kw: seen.append(T) or real_mask(T, *a, **kw))
    with torch.no_grad():
        for T in (130, 200, 255, 300, 513, 1000):
            q, k, v = make_inputs(1, T, 2, 1, 2, D=8, Dv=8, dtype=torch.float32, seed=T)
            window_attention_flex(q, k, v, 16, compiled=False, bucket=None if T % 2 else True)
    # bucket=None off CUDA (not compiled) keeps the length; bucket=True pads
    assert seen == [256, 256, 255, 512, 513, 1024]
    # the default on CUDA (compiled): padded without autograd, exact with it (the compiled kernel stands in here)
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(flex, "_compiled_flex_attention", lambda: flex_attention)
    seen.clear()
    q, k, v = make_inputs(1, 200, 2, 1, 2, D=8, Dv=8, dtype=torch.float32)
    with torch.no_grad():
        padded = window_attention_flex(q, k, v, 16, compiled=True, bucket=None)
    exact = window_attention_flex(q, k, v, 16, compiled=True, bucket=None)
    assert seen == [256, 200]
    torch.testing.assert_close(padded, exact, rtol=1e-5, atol=1e-5)
    # through the public op: only callers that ask for it (RecurFormer's window branches), never SW-SKA's prefill
    buckets = []
    real_flex = flex.window_attention_flex
    monkeypatch.setattr(flex, "window_attention_flex",
                        lambda *a, bucket=False, **kw: buckets.append(bucket) or real_flex(*a, bucket=bucket, **kw))
    with torch.no_grad():
        window_attention(q, k, v, 16, backend="flex", bucket_lengths=True)
        window_attention(q, k, v, 16, backend="flex")
    assert buckets == [None, False]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_fully_padded_row_is_zero():
    q, k, v = make_inputs(2, 20, 4, 1, 4, D=16, Dv=16, dtype=torch.float32)
    pad = left_padding([20, 0], 20)
    got = window_attention(q, k, v, 4, key_padding_mask=pad, backend="flex")
    assert not got.isnan().any() and got[1].abs().max() == 0


def test_auto_backend_on_cpu_is_chunked():
    from slimkv.ops.window_attn import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "chunked"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(k=torch.zeros(1, 4, 3, 8)), "multiple of key heads"),
        (dict(window=-1), "non-negative"),
        (dict(key_padding_mask=torch.ones(1, 5, dtype=torch.bool)), "key_padding_mask"),
        (dict(key_padding_mask=torch.ones(1, 4)), "key_padding_mask"),
        (dict(backend="cuda"), "unknown backend"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = dict(q=torch.zeros(1, 4, 4, 8), k=torch.zeros(1, 4, 1, 8), v=torch.zeros(1, 4, 4, 8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        window_attention(**args)


@pytest.mark.parametrize("H,Hk,Hv", HEAD_LAYOUTS)
@pytest.mark.parametrize("window,T", [(None, 1), (None, 37), (36, 37), (500, 37)])
def test_sdpa_matches_reference_with_padding_and_gradients(window, T, H, Hk, Hv):
    q, k, v = make_inputs(3, T, H, Hk, Hv, seed=T + H)
    # left padding of different lengths, one row fully padded: its queries see nothing and output zeros
    pad = left_padding([T, max(1, T // 3), 0], T)
    for mask in (None, pad):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        expected = window_attention_reference(*leaves, window, key_padding_mask=mask)
        got_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        got = window_attention(*got_leaves, window, key_padding_mask=mask, backend="sdpa")
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        assert not got.isnan().any()
        cotangent = torch.randn_like(expected)
        torch.autograd.backward(expected, cotangent)
        torch.autograd.backward(got, cotangent)
        for mine, spec in zip(got_leaves, leaves):
            torch.testing.assert_close(mine.grad, spec.grad, rtol=1e-9, atol=1e-9)
    assert got[2].abs().max() == 0


def test_sdpa_backend_really_calls_scaled_dot_product_attention(monkeypatch):
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = make_inputs(1, 9, 4, 2, 2, D=8, Dv=8)
    window_attention(q, k, v, None, backend="sdpa")
    window_attention(q, k, v, None, key_padding_mask=left_padding([5], 9), backend="sdpa")
    assert calls == [True, False]  # unpadded: the causal flag (flash on CUDA); padded: an explicit mask


def test_auto_backend_is_sdpa_on_cuda_without_a_window_and_flex_with_one():
    from slimkv.ops.window_attn import pick_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # pure dispatch (no kernel runs): decided from the device type, so it is checkable without a GPU
    assert pick_backend("auto", cuda, None, 4096) == "sdpa"
    # any window stays on flex, even one that covers every prefix (SW-SKA's measured training path)
    assert pick_backend("auto", cuda, 4095, 4096) == "flex"
    assert pick_backend("sdpa", cuda, 4095, 4096) == "sdpa"
    assert pick_backend("auto", cpu, None, 4096) == "chunked"
    assert pick_backend("flex", cuda, None, 4096) == "flex"  # a named backend is kept
    with pytest.raises(ValueError, match="full causal only; window 7 does not cover 129 tokens"):
        pick_backend("sdpa", cpu, 7, 129)
