"""The sequence path with the fused training kernels (kernel_backend="triton", Triton's interpreter on CPU) computes
what the PyTorch specs compute: the loss, every parameter's gradient, and the chunked-loss `targets` route."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import slimkv

pytestmark = pytest.mark.triton


def tiny(block_type: str, **kw):
    cfg = slimkv.RodimusConfig(block_type=block_type, vocab_size=67, hidden_size=32, num_hidden_layers=2, mem_size=16,
                               num_heads=2, window_size=8, input_gate_low_rank=16, **kw)
    torch.manual_seed(0)
    return slimkv.RodimusForCausalLM(cfg)


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_fused_kernels_give_the_specs_loss_and_gradients(block_type):
    pytest.importorskip("triton")
    spec, fused = tiny(block_type, kernel_backend="torch"), tiny(block_type, kernel_backend="triton")
    fused.load_state_dict(spec.state_dict())
    ids = torch.randint(0, 67, (2, 21))
    losses = []
    for model in (spec, fused):
        loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for (name, a), b in zip(spec.named_parameters(), fused.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_targets_route_equals_the_logits_loss():
    model = tiny("rodimus_plus")
    ids = torch.randint(0, 67, (3, 17))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert out.logits is None  # the [B, T, V] logits are never built
    logits = model(ids[:, :-1], use_cache=False).logits
    want = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    assert torch.allclose(out.loss, want, rtol=1e-6)
    labels = model(ids, labels=ids).loss  # the Hugging Face convention shifts inside and agrees
    assert torch.allclose(labels, model(ids[:, :-1], targets=ids[:, 1:]).loss, rtol=1e-6)
