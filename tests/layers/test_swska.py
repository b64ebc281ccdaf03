"""Sliding-window shared-key attention (layers/swska.py) on its own: chunked prefill through the ring buffer and
one-token steps compute what one forward computes, and a token past the window is really forgotten."""
from __future__ import annotations

import pytest
import torch

from slimkv.layers.swska import SharedKeyAttention


def attention(window: int, seed: int = 0) -> SharedKeyAttention:
    torch.manual_seed(seed)
    return SharedKeyAttention(32, num_heads=4, window=window, attn_backend="chunked",
                              decode_backend="torch").double().eval()


def empty_ring(layer: SharedKeyAttention, batch: int):
    shapes = layer.state_shapes(batch)
    return (torch.zeros(shapes["key_ring"], dtype=torch.float64), torch.zeros(shapes["value_ring"], dtype=torch.float64),
            torch.zeros(shapes["ring_valid"], dtype=torch.bool))


@pytest.mark.parametrize("window, cut", [(4, 3), (4, 9), (16, 5)])
def test_chunked_prefill_through_the_ring_equals_one_forward(window, cut):
    layer = attention(window)
    T = 14
    h = torch.randn(2, T, 32, dtype=torch.float64)
    positions = torch.arange(T).expand(2, T)
    with torch.no_grad():
        full, _ = layer(h, positions)
        first, ring = layer(h[:, :cut], positions[:, :cut], ring=empty_ring(layer, 2), seen=0)
        second, _ = layer(h[:, cut:], positions[:, cut:], ring=ring, seen=cut)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-10, atol=1e-12)


def test_steps_after_a_prefill_equal_one_forward():
    layer = attention(window=5, seed=1)
    T, prefix = 12, 4
    h = torch.randn(1, T, 32, dtype=torch.float64)
    positions = torch.arange(T).expand(1, T)
    with torch.no_grad():
        full, _ = layer(h, positions)
        _, (key_ring, value_ring, ring_valid) = layer(h[:, :prefix], positions[:, :prefix],
                                                      ring=empty_ring(layer, 1), seen=0)
        steps = []
        for t in range(prefix, T):
            slot = torch.tensor(t % layer.ring_slots)
            steps.append(layer.step(h[:, t], positions[:, t], key_ring, value_ring, ring_valid, slot))
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, prefix:], rtol=1e-9, atol=1e-11)


def test_a_token_beyond_the_window_is_forgotten():
    layer = attention(window=3, seed=2)
    h = torch.randn(1, 10, 32, dtype=torch.float64)
    changed = h.clone()
    changed[:, 0] += 5.0
    positions = torch.arange(10).expand(1, 10)
    with torch.no_grad():
        a, _ = layer(h, positions)
        b, _ = layer(changed, positions)
    # query t sees tokens t-3 .. t: token 0 reaches queries 0..3 and no further
    assert (a[:, :4] - b[:, :4]).abs().max() > 1e-3
    torch.testing.assert_close(a[:, 4:], b[:, 4:], rtol=0, atol=0)
