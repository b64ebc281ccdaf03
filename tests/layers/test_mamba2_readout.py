"""Mamba2's sequence path on the fused ops (layers/mamba2.py): the readout (gate, per-head RMSNorm, norm weight
folded into out_proj) against its formula, no float32 activation saved on the torch path, and the Triton path
(interpreted on the CPU) against the torch spec with the kernels counted, so a fallback cannot pass."""
import pytest
import torch
import torch.nn.functional as F

from slimkv.layers.mamba2 import Mamba2Mixer


def _mixer(backend="auto", gate=True, seed=0):
    torch.manual_seed(seed)
    m = Mamba2Mixer(32, 4, 8, 16, use_gate=gate, gla_backend="chunked", kernel_backend=backend)
    with torch.no_grad():
        m.D.uniform_(0.5, 1.5)
        m.norm_weight.uniform_(0.5, 1.5)
    return m


def readout_spec(m: Mamba2Mixer, o, x, h):
    """out_proj(RMSNorm over each head's P channels of (o + D x) [* SiLU(z)], times the norm weight)."""
    y = o + m.D[:, None] * x
    if m.z_proj is not None:
        y = y * F.silu(m.z_proj(h)).unflatten(-1, (m.num_heads, m.head_dim))
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm_eps)
    return m.out_proj(y.flatten(-2) * m.norm_weight)


@pytest.mark.parametrize("gate", [True, False])
def test_readout_values_and_gradients_match_the_formula(gate):
    m = _mixer(gate=gate).double()
    o, x, h = (torch.randn(2, 5, *shape, dtype=torch.float64, requires_grad=True) for shape in ((4, 8), (4, 8), (32,)))
    # without a gate the readout does not read h
    wrt = (o, x, m.D, m.norm_weight, m.out_proj.weight) + ((h, m.z_proj.weight) if gate else ())
    results = []
    for readout in (m._readout, lambda o, x, h: readout_spec(m, o, x, h)):
        value = readout(o, x, h)
        results.append((value, *torch.autograd.grad(value.pow(2).sum(), wrt)))
    for got, want in zip(*results):
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


def test_sequence_projection_is_one_matmul_equal_to_three():
    m = _mixer()
    h = torch.randn(2, 6, 32)
    three = torch.cat((m.x_proj(h), m.b_proj(h), m.c_proj(h)), -1)
    torch.testing.assert_close(m._project_xbc(h, stacked=True), three)
    assert torch.equal(m._project_xbc(h, stacked=False), three)


def test_triton_path_matches_the_torch_spec_and_runs_its_kernels():
    from tests.ops.triton_support import DEVICE, INTERPRETED, count_launches, rel_err

    if not INTERPRETED and not torch.cuda.is_available():
        pytest.skip("needs a GPU or the Triton interpreter")
    from slimkv.ops.conv import triton as conv_triton
    from slimkv.ops.norm import triton as norm_triton

    spec, fast = _mixer("torch"), _mixer("triton")
    fast.load_state_dict(spec.state_dict())
    fast.to(DEVICE)
    h = torch.randn(2, 13, 32)
    outs = []
    for m, inp in ((spec, h.clone().requires_grad_()), (fast, h.to(DEVICE).requires_grad_())):
        y, _ = m(inp)
        y.pow(2).sum().backward()
        outs.append((y, inp.grad, m.conv_weight.grad, m.D.grad, m.norm_weight.grad, m.z_proj.weight.grad))
    with count_launches(conv_triton, "conv_silu_fwd_kernel") as conv, \
            count_launches(norm_triton, "rms_norm_fwd_kernel") as norm:
        fast(h.to(DEVICE))
    assert conv["conv_silu_fwd_kernel"] == 1 and norm["rms_norm_fwd_kernel"] == 1
    for got, want in zip(outs[1], outs[0]):
        assert rel_err(got.cpu(), want) < 1e-5
