"""Fused DDTS gate kernels (forward and backward) and their autograd.Function.

legend: R rows, m memory size, BR rows per program, BM key block (all of m, a power of two)

Forward, per row (all float32):
    g = softplus(g^), log g, tau = sigmoid(t^)
    log_decay = -tau g;   ig = exp(tau log g);   k_gated = k / max(||k||, eps) * ig
Backward, recomputing all of the above from gt and k (with kh = k / max(||k||, eps)):
    dig = dk_gated * kh;   dkh = dk_gated * ig
    dtau = dig ig log g - dlog_decay g                        dt^ = dtau tau (1 - tau)
    dg^  = (dig ig tau / g - dlog_decay tau) * dg/dg^         dg/dg^ = sigmoid(g^) (1 above softplus' threshold 20)
    dk   = (dkh - kh <kh, dkh>) / ||k||   (dkh / eps where the norm is clamped)
where ig tau / g * dg/dg^ is formed as ig tau * dlog g/dg^, which tends to ig tau (not 0 / 0) as g^ -> -inf.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rows import as_rows, check_dtypes

# rows x keys per program: the backward keeps about fifteen such tiles live
TILE = 1024
# softplus(x) = x above this (torch's default threshold); below LOG_LINEAR, log softplus(x) = x to float32 precision
THRESHOLD = 20.0
LOG_LINEAR = -15.0


@triton.jit
def _softplus_with_log(x, THRESHOLD: tl.constexpr, LOG_LINEAR: tl.constexpr):
    """softplus(x), log(softplus(x)), d softplus / dx, d log softplus / dx, without log1p: Goldberg's
    log1p(u) = log(1 + u) * u / ((1 + u) - 1) is exact to rounding where 1 + u != 1."""
    u = tl.exp(tl.minimum(x, THRESHOLD))
    w = 1.0 + u
    exact = w == 1.0
    log1p_u = tl.where(exact, u, tl.log(w) * (u / tl.where(exact, 1.0, w - 1.0)))
    g = tl.where(x > THRESHOLD, x, log1p_u)
    sig = tl.sigmoid(x)
    dg = tl.where(x > THRESHOLD, 1.0, sig)
    linear = x < LOG_LINEAR
    log_g = tl.where(linear, x, tl.log(tl.where(linear, 1.0, g)))
    dlog_g = tl.where(linear, 1.0, dg / tl.where(linear, 1.0, g))
    return g, log_g, dg, dlog_g


@triton.jit
def ddts_gates_fwd_kernel(
    gt, k, k_out, ld_out,
    R, M, stride_gt, stride_k, stride_ko, stride_ld, eps,
    BR: tl.constexpr, BM: tl.constexpr, THRESHOLD: tl.constexpr, LOG_LINEAR: tl.constexpr,
):
    """Grid (cdiv(R, BR),)."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    cols = tl.arange(0, BM)
    mask = (rows < R)[:, None] & (cols < M)[None, :]
    gt_row = gt + rows[:, None] * stride_gt + cols[None, :]
    b_gh = tl.load(gt_row, mask=mask, other=0.0).to(tl.float32)
    b_th = tl.load(gt_row + M, mask=mask, other=0.0).to(tl.float32)
    b_k = tl.load(k + rows[:, None] * stride_k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b_g, b_log_g, _, _ = _softplus_with_log(b_gh, THRESHOLD, LOG_LINEAR)
    b_tau = tl.sigmoid(b_th)
    b_inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(b_k * b_k, axis=1)), eps)
    b_kg = b_k * b_inv[:, None] * tl.exp(b_tau * b_log_g)
    tl.store(k_out + rows[:, None] * stride_ko + cols[None, :], b_kg.to(k_out.dtype.element_ty), mask=mask)
    tl.store(ld_out + rows[:, None] * stride_ld + cols[None, :], -b_tau * b_g, mask=mask)


@triton.jit
def ddts_gates_bwd_kernel(
    gt, k, dkg, dld, dgt, dk,
    R, M, stride_gt, stride_k, stride_dkg, stride_dld, stride_dgt, stride_dk, eps,
    BR: tl.constexpr, BM: tl.constexpr, THRESHOLD: tl.constexpr, LOG_LINEAR: tl.constexpr,
    HAS_DKG: tl.constexpr, HAS_DLD: tl.constexpr,
):
    """Grid (cdiv(R, BR),). Writes dgt [R, 2m] = [dg^ | dt^] and dk [R, m]."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    cols = tl.arange(0, BM)
    mask = (rows < R)[:, None] & (cols < M)[None, :]
    gt_row = gt + rows[:, None] * stride_gt + cols[None, :]
    b_gh = tl.load(gt_row, mask=mask, other=0.0).to(tl.float32)
    b_th = tl.load(gt_row + M, mask=mask, other=0.0).to(tl.float32)
    b_k = tl.load(k + rows[:, None] * stride_k + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b_g, b_log_g, b_dg, b_dlog_g = _softplus_with_log(b_gh, THRESHOLD, LOG_LINEAR)
    b_tau = tl.sigmoid(b_th)
    b_ig = tl.exp(b_tau * b_log_g)
    b_norm = tl.sqrt(tl.sum(b_k * b_k, axis=1))
    b_inv = 1.0 / tl.maximum(b_norm, eps)
    b_kh = b_k * b_inv[:, None]
    b_dgh = tl.zeros([BR, BM], dtype=tl.float32)
    b_dtau = tl.zeros([BR, BM], dtype=tl.float32)
    b_dk = tl.zeros([BR, BM], dtype=tl.float32)
    if HAS_DKG:
        b_dkg = tl.load(dkg + rows[:, None] * stride_dkg + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        b_dig = b_dkg * b_kh * b_ig
        b_dtau += b_dig * b_log_g
        b_dgh += b_dig * b_tau * b_dlog_g
        b_dkh = b_dkg * b_ig
        # the norm's own gradient only where it is not clamped to eps (clamp_min passes norm >= eps)
        b_proj = tl.where(b_norm >= eps, tl.sum(b_kh * b_dkh, axis=1), 0.0)
        b_dk = (b_dkh - b_kh * b_proj[:, None]) * b_inv[:, None]
    if HAS_DLD:
        b_dld = tl.load(dld + rows[:, None] * stride_dld + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        b_dtau -= b_dld * b_g
        b_dgh -= b_dld * b_tau * b_dg
    b_dth = b_dtau * b_tau * (1.0 - b_tau)
    dgt_row = dgt + rows[:, None] * stride_dgt + cols[None, :]
    tl.store(dgt_row, b_dgh.to(dgt.dtype.element_ty), mask=mask)
    tl.store(dgt_row + M, b_dth.to(dgt.dtype.element_ty), mask=mask)
    tl.store(dk + rows[:, None] * stride_dk + cols[None, :], b_dk.to(dk.dtype.element_ty), mask=mask)


def _blocks(M: int) -> tuple[int, int, int]:
    BM = triton.next_power_of_2(M)
    if BM > TILE:
        raise ValueError(f"ddts_gates (triton): at most {TILE} keys per row; got {M}")
    BR = max(1, TILE // BM)
    return BR, BM, 4


class DDTSGatesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gt, k, eps, out_dtype):
        gt2, k2 = as_rows(gt), as_rows(k)
        R, M = k2.shape
        BR, BM, warps = _blocks(M)
        k_out = torch.empty(R, M, dtype=out_dtype, device=k.device)
        ld = torch.empty(R, M, dtype=torch.float32, device=k.device)
        if R:
            ddts_gates_fwd_kernel[(triton.cdiv(R, BR),)](
                gt2, k2, k_out, ld, R, M, gt2.stride(0), k2.stride(0), k_out.stride(0), ld.stride(0), eps,
                BR=BR, BM=BM, THRESHOLD=THRESHOLD, LOG_LINEAR=LOG_LINEAR, num_warps=warps)
        ctx.save_for_backward(gt2, k2)
        ctx.eps, ctx.gt_shape, ctx.k_shape = eps, gt.shape, k.shape
        return k_out.view(k.shape), ld.view(k.shape)

    @staticmethod
    def backward(ctx, dkg, dld):
        gt2, k2 = ctx.saved_tensors
        R, M = k2.shape
        BR, BM, warps = _blocks(M)
        dgt = torch.empty(R, 2 * M, dtype=gt2.dtype, device=k2.device)
        dk = torch.empty(R, M, dtype=k2.dtype, device=k2.device)
        dkg2 = None if dkg is None else as_rows(dkg)
        dld2 = None if dld is None else as_rows(dld)
        if R:
            ddts_gates_bwd_kernel[(triton.cdiv(R, BR),)](
                gt2, k2, dkg2, dld2, dgt, dk, R, M, gt2.stride(0), k2.stride(0),
                dkg2.stride(0) if dkg2 is not None else 0, dld2.stride(0) if dld2 is not None else 0,
                dgt.stride(0), dk.stride(0), ctx.eps,
                BR=BR, BM=BM, THRESHOLD=THRESHOLD, LOG_LINEAR=LOG_LINEAR,
                HAS_DKG=dkg2 is not None, HAS_DLD=dld2 is not None, num_warps=warps)
        return dgt.view(ctx.gt_shape), dk.view(ctx.k_shape), None, None


def ddts_gates_triton(gt, k, eps=1e-12, out_dtype=None):
    """Same contract as slimkv.ops.ddts_gates.ddts_gates."""
    check_dtypes("ddts_gates", gt=gt, k=k)
    return DDTSGatesFunction.apply(gt, k, float(eps), out_dtype or torch.float32)
