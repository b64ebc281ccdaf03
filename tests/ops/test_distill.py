"""Fused cross-entropy + KL(teacher || student) over LM heads against the materialised-logits spec: values, ignored
labels, gradients, autocast, and the number of logit matmuls it really runs."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from slimkv.ops.distill import linear_distill, linear_distill_reference, linear_kl_reference


def _inputs(N=37, d=8, dt=6, V=29, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hs, ws, ht, wt = (torch.randn(*shape, generator=g, dtype=dtype) for shape in ((N, d), (V, d), (N, dt), (V, dt)))
    labels = torch.randint(0, V, (N,), generator=g)
    return hs, ws, labels, ht, wt


def test_references_are_the_definitions():
    hs, ws, labels, ht, wt = _inputs(N=3)
    p, q = (hs @ ws.T).softmax(-1), (ht @ wt.T).softmax(-1)
    kl = (q * (q.log() - p.log())).sum(-1).mean()
    torch.testing.assert_close(linear_kl_reference(hs, ws, ht, wt), kl)
    torch.testing.assert_close(linear_kl_reference(hs, ws, hs, ws), torch.zeros((), dtype=torch.float64))
    ce = -p.log()[torch.arange(3), labels].mean()
    torch.testing.assert_close(linear_distill_reference(hs, ws, labels, ht, wt, 0.5), ce + 0.5 * kl)


def _value_and_grads(fn, hs, ws, labels, ht, wt):
    leaf_h, leaf_w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    value = fn(leaf_h, leaf_w, labels, ht, wt)
    value.backward()
    return value.detach(), leaf_h.grad, leaf_w.grad


@pytest.mark.parametrize("chunk", [1, 5, 37, 100])
@pytest.mark.parametrize("kl_weight", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("ignored", [False, True])
def test_fused_matches_reference_with_gradients(chunk, kl_weight, ignored):
    hs, ws, labels, ht, wt = _inputs()
    if ignored:
        labels = labels.masked_fill(torch.arange(37) % 3 == 0, -100)
    want = _value_and_grads(lambda *a: linear_distill_reference(*a, kl_weight), hs, ws, labels, ht, wt)
    got = _value_and_grads(lambda *a: linear_distill(*a, kl_weight, chunk=chunk), hs, ws, labels, ht, wt)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)
    if ignored:
        # ignored tokens contribute nothing
        torch.testing.assert_close(got[1][labels == -100], torch.zeros_like(hs[labels == -100]))


def test_leading_dims_scale_and_teacher_is_a_constant():
    hs, ws, labels, ht, wt = _inputs(N=24)
    ht = ht.clone().requires_grad_()
    leaf = hs.clone().requires_grad_()
    loss = linear_distill(leaf.view(4, 6, -1), ws, labels.view(4, 6), ht.view(4, 6, -1), wt, 1.0, chunk=7)
    (3.0 * loss).backward()
    ref = hs.clone().requires_grad_()
    (3.0 * linear_distill_reference(ref, ws, labels, ht.detach(), wt, 1.0)).backward()
    torch.testing.assert_close(leaf.grad, ref.grad)
    assert ht.grad is None


def test_bf16_autocast_matches_the_reference_under_autocast():
    hs, ws, labels, ht, wt = _inputs(N=64, d=32, dt=24, V=200, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _value_and_grads(lambda *a: linear_distill_reference(*a, 1.0), hs, ws, labels, ht, wt)
        got = _value_and_grads(lambda *a: linear_distill(*a, 1.0, chunk=16), hs, ws, labels, ht, wt)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    for w, g in zip(want[1:], got[1:]):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3)


def test_runs_each_logit_matmul_once_and_none_in_the_backward():
    N, d, dt, V = 40, 8, 6, 29
    hs, ws, labels, ht, wt = _inputs(N=N, d=d, dt=dt, V=V)
    leaf = hs.clone().requires_grad_()
    with FlopCounterMode(display=False) as forward:
        loss = linear_distill(leaf, ws, labels, ht, wt, 1.0, chunk=16)
    # student and teacher logits, then dh and dW of the student: 2 * N * V * width flops each
    assert forward.get_total_flops() == 2 * N * V * (3 * d + dt)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    assert backward.get_total_flops() == 0


def test_shapes_must_agree():
    hs, ws, labels, ht, wt = _inputs()
    with pytest.raises(ValueError, match="same tokens over the same vocabulary"):
        linear_distill(hs, ws, labels, ht[:-1], wt, 1.0)
    with pytest.raises(ValueError, match="labels must be"):
        linear_distill(hs, ws, labels[:-1], ht, wt, 1.0)
    with pytest.raises(ValueError, match="chunk must be"):
        linear_distill(hs, ws, labels, ht, wt, 1.0, chunk=0)
