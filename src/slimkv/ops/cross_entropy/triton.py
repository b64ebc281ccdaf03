"""Row-wise Triton kernels of the chunked linear cross-entropy (the matmuls stay in cuBLAS).

legend: N tokens, Vc columns of the current vocabulary chunk (starting at vocabulary column v0), BV column block

    ce_fwd_kernel_chunk:  per row, an online logsumexp over the chunk's logits merged into lse[n], and the
                          target's logit added to picked[n] when the label falls in the chunk
    ce_bwd_kernel_chunk:  dl = (exp(l - lse[n]) - [col == label]) * scale[n], written over the logits in place
Both read the chunk once in its own dtype (bf16 under autocast); nothing of width Vc is ever float32 in memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FWD_BV = 2048
BWD_BV = 1024


@triton.jit
def ce_fwd_kernel_chunk(logits, labels, lse, picked, Vc, v0, stride, BV: tl.constexpr):
    """Grid (N,). lse, picked [N] float32, updated in place (one program per row)."""
    n = tl.program_id(0).to(tl.int64)
    row = logits + n * stride
    cols = tl.arange(0, BV)
    b_max = tl.full([BV], float("-inf"), dtype=tl.float32)
    b_sum = tl.zeros([BV], dtype=tl.float32)
    for c0 in range(0, Vc, BV):
        b_l = tl.load(row + c0 + cols, mask=c0 + cols < Vc, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(b_max, b_l)
        # lanes that have only seen -inf keep a zero sum (exp(-inf - -inf) would be NaN)
        seen = new_max > float("-inf")
        b_sum = tl.where(seen, b_sum * tl.exp(b_max - tl.where(seen, new_max, 0.0)) +
                         tl.exp(b_l - tl.where(seen, new_max, 0.0)), 0.0)
        b_max = new_max
    m = tl.max(b_max, axis=0)
    chunk_lse = m + tl.log(tl.sum(b_sum * tl.exp(b_max - m), axis=0))
    old = tl.load(lse + n)
    top = tl.maximum(old, chunk_lse)
    tl.store(lse + n, top + tl.log(tl.exp(old - top) + tl.exp(chunk_lse - top)))
    label = tl.load(labels + n) - v0
    inside = (label >= 0) & (label < Vc)
    target = tl.load(row + tl.where(inside, label, 0)).to(tl.float32)
    tl.store(picked + n, tl.load(picked + n) + tl.where(inside, target, 0.0))


@triton.jit
def ce_bwd_kernel_chunk(logits, labels, lse, scale, Vc, v0, stride, BV: tl.constexpr):
    """Grid (N, cdiv(Vc, BV)). Overwrites the chunk's logits with their gradient."""
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)
    ok = cols < Vc
    ptr = logits + n * stride + cols
    b_l = tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
    label = tl.load(labels + n) - v0
    b_grad = tl.exp(b_l - tl.load(lse + n)) - tl.where(cols == label, 1.0, 0.0)
    tl.store(ptr, (b_grad * tl.load(scale + n)).to(logits.dtype.element_ty), mask=ok)


def chunk_forward(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, picked: torch.Tensor,
                  v0: int) -> None:
    N, Vc = logits.shape
    if N:
        ce_fwd_kernel_chunk[(N,)](logits, labels, lse, picked, Vc, v0, logits.stride(0), BV=FWD_BV, num_warps=8)


def chunk_backward(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor,
                   v0: int) -> torch.Tensor:
    N, Vc = logits.shape
    if N:
        ce_bwd_kernel_chunk[(N, triton.cdiv(Vc, BWD_BV))](logits, labels, lse, scale, Vc, v0, logits.stride(0),
                                                          BV=BWD_BV, num_warps=4)
    return logits


TRITON_KERNELS = (chunk_forward, chunk_backward)
