"""Fused SwiGLU kernels (forward and backward) and their autograd.Function.

legend: R rows, f hidden width, BR row block, BF column block

    forward:   y = SiLU(gate) * up
    backward:  dup = dy * SiLU(gate);  dgate = dy * up * sig(gate) (1 + gate (1 - sig(gate)))
written into one [R, 2f] gradient laid out like u, so the fused projection's backward takes it as is.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rows import as_rows, check_dtypes

BR = 16
BF = 256


@triton.jit
def swiglu_fwd_kernel(u, y, R, F, stride_u, stride_y, BR: tl.constexpr, BF: tl.constexpr):
    """Grid (cdiv(R, BR), cdiv(F, BF))."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    cols = tl.program_id(1) * BF + tl.arange(0, BF)
    mask = (rows < R)[:, None] & (cols < F)[None, :]
    u_row = u + rows[:, None] * stride_u + cols[None, :]
    b_up = tl.load(u_row, mask=mask, other=0.0).to(tl.float32)
    b_gate = tl.load(u_row + F, mask=mask, other=0.0).to(tl.float32)
    b_y = b_gate * tl.sigmoid(b_gate) * b_up
    tl.store(y + rows[:, None] * stride_y + cols[None, :], b_y.to(y.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(u, dy, du, R, F, stride_u, stride_dy, stride_du, BR: tl.constexpr, BF: tl.constexpr):
    """Grid (cdiv(R, BR), cdiv(F, BF)). du [R, 2f] = [dup | dgate]."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    cols = tl.program_id(1) * BF + tl.arange(0, BF)
    mask = (rows < R)[:, None] & (cols < F)[None, :]
    u_row = u + rows[:, None] * stride_u + cols[None, :]
    b_up = tl.load(u_row, mask=mask, other=0.0).to(tl.float32)
    b_gate = tl.load(u_row + F, mask=mask, other=0.0).to(tl.float32)
    b_dy = tl.load(dy + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b_sig = tl.sigmoid(b_gate)
    du_row = du + rows[:, None] * stride_du + cols[None, :]
    tl.store(du_row, (b_dy * b_gate * b_sig).to(du.dtype.element_ty), mask=mask)
    tl.store(du_row + F, (b_dy * b_up * b_sig * (1.0 + b_gate * (1.0 - b_sig))).to(du.dtype.element_ty), mask=mask)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        u2 = as_rows(u)
        R, F2 = u2.shape
        F = F2 // 2
        y = torch.empty(R, F, dtype=u.dtype, device=u.device)
        if R and F:
            swiglu_fwd_kernel[(triton.cdiv(R, BR), triton.cdiv(F, BF))](
                u2, y, R, F, u2.stride(0), y.stride(0), BR=BR, BF=BF, num_warps=8)
        ctx.save_for_backward(u2)
        ctx.shape = u.shape
        return y.view(*u.shape[:-1], F)

    @staticmethod
    def backward(ctx, dy):
        (u2,) = ctx.saved_tensors
        R, F2 = u2.shape
        F = F2 // 2
        dy2 = as_rows(dy)
        du = torch.empty(R, F2, dtype=u2.dtype, device=u2.device)
        if R and F:
            swiglu_bwd_kernel[(triton.cdiv(R, BR), triton.cdiv(F, BF))](
                u2, dy2, du, R, F, u2.stride(0), dy2.stride(0), du.stride(0), BR=BR, BF=BF, num_warps=8)
        return du.view(ctx.shape)


def swiglu_triton(u: torch.Tensor) -> torch.Tensor:
    """Same contract as slimkv.ops.swiglu.swiglu."""
    check_dtypes("swiglu", u=u)
    return SwiGLUFunction.apply(u)
