"""The DDTS mixer (layers/ddts.py) on its own: a prefill that carries its state, then one-token steps, computes what
one forward over the whole sequence computes; padded positions leave the carried state alone."""
from __future__ import annotations

import pytest
import torch

from slimkv.layers.ddts import DDTSMixer


def mixer(seed: int = 0) -> DDTSMixer:
    torch.manual_seed(seed)
    layer = DDTSMixer(32, expand_ratio=2.0, mem_size=8, conv_size=4, decode_backend="torch", kernel_backend="torch")
    with torch.no_grad():
        # trained-looking weights: the zero-initialised parts would hide a wrong state update
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer.double().eval()


@pytest.mark.parametrize("prefix", [1, 3, 12])
def test_prefill_then_steps_equal_one_forward(prefix):
    layer = mixer()
    h = torch.randn(2, 16, 32, dtype=torch.float64)
    with torch.no_grad():
        full, _ = layer(h)
        head, (conv_state, ssm_state) = layer(h[:, :prefix], use_cache=True)
        steps = [layer.step(h[:, t], conv_state, ssm_state) for t in range(prefix, 16)]
    torch.testing.assert_close(head, full[:, :prefix], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, prefix:], rtol=1e-9, atol=1e-11)


def test_chunked_prefill_carries_conv_and_recurrent_state():
    layer = mixer(1)
    h = torch.randn(1, 20, 32, dtype=torch.float64)
    with torch.no_grad():
        full, (conv_full, ssm_full) = layer(h, use_cache=True)
        first, state = layer(h[:, :7], use_cache=True)
        second, (conv_state, ssm_state) = layer(h[:, 7:], *state, use_cache=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(conv_state, conv_full)
    torch.testing.assert_close(ssm_state, ssm_full, rtol=1e-10, atol=1e-12)
    assert conv_state.shape == layer.state_shapes(1)["conv_state"]
    assert ssm_state.shape == layer.state_shapes(1)["ssm_state"]


def test_left_padding_does_not_touch_the_state():
    layer = mixer(2)
    real = torch.randn(1, 9, 32, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 4, 32, dtype=torch.float64), real], dim=1)
    mask = torch.tensor([[False] * 4 + [True] * 9])
    with torch.no_grad():
        want, (conv_want, ssm_want) = layer(real, use_cache=True)
        got, (conv_got, ssm_got) = layer(padded, padding_mask=mask, use_cache=True)
    torch.testing.assert_close(got[:, 4:], want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ssm_got, ssm_want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(conv_got, conv_want)
