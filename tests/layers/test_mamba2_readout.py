"""Mamba2's readout (gate, per-head RMSNorm, out_proj) recomputes its float32 intermediates in backward: the same
gradients as keeping them, without saving any float32 [tokens, H, P] tensor."""
import torch

from slimkv.layers.mamba2 import Mamba2Mixer


def _mixer():
    torch.manual_seed(0)
    m = Mamba2Mixer(32, 4, 8, 16, use_gate=True, gla_backend="chunked")
    with torch.no_grad():
        m.D.uniform_(0.5, 1.5)
        m.norm_weight.uniform_(0.5, 1.5)
    return m


def test_readout_gradients_equal_the_kept_intermediates():
    m = _mixer().double()
    o, x, h = (torch.randn(2, 5, *shape, dtype=torch.float64, requires_grad=True) for shape in ((4, 8), (4, 8), (32,)))
    grads = []
    for readout in (m._readout, lambda o, x, h: m.out_proj(m._gated_head_norm(o, x, m.z_proj(h), h.dtype))):
        m.zero_grad()
        value = readout(o, x, h)
        inputs = (o, x, h, m.D, m.norm_weight, m.z_proj.weight, m.out_proj.weight)
        grads.append((value, *torch.autograd.grad(value.pow(2).sum(), inputs)))
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want)


def test_readout_saves_no_float32_activations_under_bf16():
    m = _mixer()
    B, T, H, P = 2, 7, 4, 8
    saved = []
    o, x = (torch.randn(B, T, H, P, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    h = torch.randn(B, T, 32, dtype=torch.bfloat16, requires_grad=True)

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m._readout(o, x, h)
    per_token = [(dtype, shape) for dtype, shape in saved if shape[:2] == (B, T)]
    assert per_token, "nothing per token was saved: the hook saw no autograd graph"
    assert all(dtype == torch.bfloat16 for dtype, _ in per_token), per_token
    y.float().sum().backward()
    assert o.grad is not None and h.grad is not None and m.norm_weight.grad is not None
