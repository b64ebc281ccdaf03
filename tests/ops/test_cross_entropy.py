"""Chunked linear cross-entropy: the chunked torch and Triton paths against the full-logits spec (float64).

Under TRITON_INTERPRET=1 on the CPU, with a small vocabulary cut into chunks that do not divide it, ignored labels,
and gradients to both h and the weight. float32 within 1e-5; under bf16 autocast the paths are compared with the
spec under the same autocast (same bf16 logits, same rounding of their gradient) within 1e-2.
"""
from __future__ import annotations

import pytest
import torch

from tests.ops.triton_support import DEVICE, count_launches, rel_err

from slimkv.ops.cross_entropy import linear_cross_entropy, vocab_chunk  # noqa: E402
from slimkv.ops.cross_entropy import triton as ce_triton  # noqa: E402

pytestmark = pytest.mark.triton


def make(shape, d, V, seed=0, ignore_every=4):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, d, generator=gen)
    weight = torch.randn(V, d, generator=gen) / d**0.5
    labels = torch.randint(0, V, shape, generator=gen)
    labels.view(-1)[::ignore_every] = -100
    return h, weight, labels


def loss_and_grads(h, weight, labels, backend, chunk_size=None, autocast=False):
    h, weight = (t.detach().to(DEVICE).requires_grad_(True) for t in (h, weight))
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        loss = linear_cross_entropy(h, weight, labels.to(DEVICE), chunk_size=chunk_size, backend=backend)
    return (loss, *torch.autograd.grad(loss, (h, weight)))


@pytest.mark.parametrize("backend", ["chunked", "triton"])
@pytest.mark.parametrize("shape, d, V, chunk", [((37,), 16, 300, 128), ((2, 9), 8, 130, None), ((3,), 4, 50, 128)])
def test_matches_full_logits_spec_float32(nan_empty, backend, shape, d, V, chunk):
    h, weight, labels = make(shape, d, V)
    got = loss_and_grads(h, weight, labels, backend, chunk)
    ref = loss_and_grads(h.double(), weight.double(), labels, "torch")
    assert got[0].dtype == torch.float32 and got[1].shape == h.shape and got[2].dtype == weight.dtype
    errors = [rel_err(a, b) for a, b in zip(got, ref)]
    assert max(errors) <= 1e-5, errors


@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_matches_spec_under_bf16_autocast(nan_empty, backend):
    h, weight, labels = make((3, 20), 32, 400, ignore_every=3)
    got = loss_and_grads(h, weight, labels, backend, 128, autocast=True)
    ref = loss_and_grads(h, weight, labels, "torch", autocast=True)
    # the LM head sees float32 h (the final norm's output) and float32 weights; both paths run the bf16 matmul
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    errors = [rel_err(a, b) for a, b in zip(got, ref)]
    assert max(errors) <= 1e-2, errors


def test_every_label_ignored_gives_nan_like_the_spec():
    h, weight, labels = make((5,), 8, 64)
    labels[:] = -100
    for backend in ("torch", "chunked", "triton"):
        assert torch.isnan(linear_cross_entropy(h, weight, labels, chunk_size=128, backend=backend))


def test_chunks_cover_the_vocabulary_once():
    assert vocab_chunk(16384, 126464) == 16384
    assert vocab_chunk(1, 126464) == 126464
    assert vocab_chunk(10**9, 126464) == 128


def test_triton_path_really_runs():
    h, weight, labels = make((6,), 8, 300)
    h.requires_grad_(True)
    names = ("ce_fwd_kernel_chunk", "ce_bwd_kernel_chunk")
    with count_launches(ce_triton, *names) as launches:
        linear_cross_entropy(h, weight, labels, chunk_size=128, backend="triton").backward()
    # 300 columns in chunks of 128: three chunks each way
    assert launches == {"ce_fwd_kernel_chunk": 3, "ce_bwd_kernel_chunk": 3}
    if DEVICE == "cpu":
        with count_launches(ce_triton, *names) as launches:
            linear_cross_entropy(h, weight, labels)
        assert launches == {"ce_fwd_kernel_chunk": 0, "ce_bwd_kernel_chunk": 0}


def test_bad_shapes_raise_value_error():
    h, weight, labels = make((6,), 8, 30)
    with pytest.raises(ValueError, match="weight must be"):
        linear_cross_entropy(h, weight[:, :4], labels)
    with pytest.raises(ValueError, match="labels must be"):
        linear_cross_entropy(h, weight, labels[:3])
