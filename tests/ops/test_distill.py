"""Chunked KL(teacher || student) over LM heads against the materialised-logits spec: values, masks, gradients."""
import pytest
import torch

from slimkv.ops.distill import linear_kl, linear_kl_reference


def _inputs(N=37, d=8, dt=6, V=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(V, d, generator=g, dtype=torch.float64),
            torch.randn(N, dt, generator=g, dtype=torch.float64), torch.randn(V, dt, generator=g, dtype=torch.float64))


def test_reference_is_the_definition():
    hs, ws, ht, wt = _inputs(N=3)
    p, q = (hs @ ws.T).softmax(-1), (ht @ wt.T).softmax(-1)
    want = (q * (q.log() - p.log())).sum(-1).mean()
    torch.testing.assert_close(linear_kl_reference(hs, ws, ht, wt), want)
    # identical distributions: zero
    torch.testing.assert_close(linear_kl_reference(hs, ws, hs, ws), torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("chunk", [1, 5, 37, 100])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_matches_reference_with_gradients(chunk, masked):
    hs, ws, ht, wt = _inputs()
    mask = (torch.arange(37) % 3 != 0) if masked else None
    grads = []
    for fn in (linear_kl_reference, lambda *a: linear_kl(*a, chunk=chunk)):
        leaf_h, leaf_w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
        value = fn(leaf_h, leaf_w, ht, wt, mask)
        value.backward()
        grads.append((value.detach(), leaf_h.grad, leaf_w.grad))
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want)
    if masked:
        # masked-out tokens contribute nothing
        torch.testing.assert_close(grads[0][1][~mask], torch.zeros_like(hs[~mask]))


def test_shapes_must_agree():
    hs, ws, ht, wt = _inputs()
    with pytest.raises(ValueError, match="same tokens over the same vocabulary"):
        linear_kl(hs, ws, ht[:-1], wt)
