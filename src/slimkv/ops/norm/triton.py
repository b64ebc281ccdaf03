"""Fused RMSNorm kernels (plain, residual add + norm, gated) with their autograd.Functions.

legend: R rows, C channels, BR rows per program, BC channel block (all of C, a power of two)

One forward kernel and one backward kernel serve the three variants (constexpr ADD / GATED). With u the row being
normalised (x; the new residual s = r + x; or p * SiLU(z) with p = x, or p = x + D * xs when the gated norm also
takes the DDTS skip term) and rstd = 1 / sqrt(mean(u^2) + eps):

    forward:   y = u * rstd * w                                        one read of the inputs, one write of y (and s)
    backward:  g = dy * w;  du = rstd * (g - u * rstd^2 * mean(g * u));  dw = sum_rows dy * u * rstd
               ADD:   ds = du + (grad of s);  dx = dr = ds
               GATED: dp = du * SiLU(z);  dz = du * p * SiLU'(z),  SiLU'(z) = sig(z) (1 + z (1 - sig(z)))
                      dx = dp;  with the skip: dxs = dp * D,  dD = sum_rows dp * xs

The backward re-reads the inputs and recomputes u and rstd (a row reduction) instead of saving any float32 row:
autograd keeps only the inputs (for ADD, only s, which is also the residual stream). dw is reduced in two steps: each
program of a persistent grid sums its rows into one partial [C] row, then torch sums the partials (deterministic, no
atomics); so is dD.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rows import as_rows, check_dtypes, num_workers

# elements of a row tile a program holds (rows x channels; wider rows get one row per program): the backward keeps
# about a dozen such tiles live, so it takes half the forward's and more warps, to stay clear of register spills
TILE = {False: 4096, True: 2048}
MAX_CHANNELS = 32768


def _blocks(C: int, backward: bool = False) -> tuple[int, int, int]:
    """(BR, BC, num_warps) for rows of C channels: about 8-16 tile elements per thread."""
    BC = triton.next_power_of_2(C)
    if BC > MAX_CHANNELS:
        raise ValueError(f"norm (triton): at most {MAX_CHANNELS} channels per row; got {C}")
    BR = max(1, TILE[backward] // BC)
    return BR, BC, min(16, max(4, BR * BC // 256 if backward else BR * BC // 512))


@triton.jit
def rms_norm_fwd_kernel(
    x, z, res, w, y, s_out, xs, d,
    R, C, stride_x, stride_z, stride_res, stride_y, stride_s, stride_xs, eps,
    BR: tl.constexpr, BC: tl.constexpr, ADD: tl.constexpr, GATED: tl.constexpr, SKIP: tl.constexpr,
):
    """Grid (cdiv(R, BR),). ADD: x is the block output, res the residual, s_out = res + x. GATED: z is the gate;
    SKIP (with GATED): x + d * xs is gated."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    cols = tl.arange(0, BC)
    col_ok = cols < C
    mask = (rows < R)[:, None] & col_ok[None, :]
    b_u = tl.load(x + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if ADD:
        b_r = tl.load(res + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # the sum is rounded to the residual's dtype before the norm sees it, as the unfused add-then-norm does
        b_s = (b_r + b_u.to(s_out.dtype.element_ty).to(tl.float32)).to(s_out.dtype.element_ty)
        tl.store(s_out + rows[:, None] * stride_s + cols[None, :], b_s, mask=mask)
        b_u = b_s.to(tl.float32)
    if GATED:
        if SKIP:
            b_xs = tl.load(xs + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            b_u += tl.load(d + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :] * b_xs
        b_z = tl.load(z + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        b_u = b_u * b_z * tl.sigmoid(b_z)
    b_rstd = tl.rsqrt(tl.sum(b_u * b_u, axis=1) / C + eps)
    b_w = tl.load(w + cols, mask=col_ok, other=0.0).to(tl.float32)
    b_y = b_u * b_rstd[:, None] * b_w[None, :]
    tl.store(y + rows[:, None] * stride_y + cols[None, :], b_y.to(y.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_bwd_kernel(
    x, z, w, dy, ds_in, dx, dz, dres, dw_part, xs, d, dxs, dd_part,
    R, C, rows_per_program, stride_x, stride_z, stride_dy, stride_ds, stride_dx, stride_dz, stride_dres,
    stride_xs, stride_dxs, eps,
    BR: tl.constexpr, BC: tl.constexpr, ADD: tl.constexpr, GATED: tl.constexpr, HAS_DS: tl.constexpr,
    SKIP: tl.constexpr,
):
    """Persistent grid (P,): program p owns rows [p * rows_per_program, (p + 1) * rows_per_program) and writes
    dw_part[p] (and dd_part[p] with SKIP). ADD: x is the saved sum s, ds_in the gradient of s (when HAS_DS); dx and
    dres get ds."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BC)
    col_ok = cols < C
    b_w = tl.load(w + cols, mask=col_ok, other=0.0).to(tl.float32)
    b_dw = tl.zeros([BC], dtype=tl.float32)
    if SKIP:
        b_d = tl.load(d + cols, mask=col_ok, other=0.0).to(tl.float32)
        b_dd = tl.zeros([BC], dtype=tl.float32)
    row0 = pid.to(tl.int64) * rows_per_program
    for r0 in range(0, rows_per_program, BR):
        rows = row0 + r0 + tl.arange(0, BR)
        mask = (rows < R)[:, None] & col_ok[None, :]
        b_x = tl.load(x + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if GATED:
            if SKIP:
                b_xs = tl.load(xs + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                b_x += b_d[None, :] * b_xs
            b_z = tl.load(z + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            b_sig = tl.sigmoid(b_z)
            b_u = b_x * b_z * b_sig
        else:
            b_u = b_x
        b_rstd = tl.rsqrt(tl.sum(b_u * b_u, axis=1) / C + eps)
        b_dy = tl.load(dy + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        b_n = b_u * b_rstd[:, None]
        b_dw += tl.sum(b_dy * b_n, axis=0)
        b_g = b_dy * b_w[None, :]
        b_du = (b_g - b_n * (tl.sum(b_g * b_n, axis=1) / C)[:, None]) * b_rstd[:, None]
        if ADD:
            if HAS_DS:
                b_du += tl.load(ds_in + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(dres + rows[:, None] * stride_dres + cols[None, :], b_du.to(dres.dtype.element_ty), mask=mask)
            tl.store(dx + rows[:, None] * stride_dx + cols[None, :], b_du.to(dx.dtype.element_ty), mask=mask)
        elif GATED:
            b_dx = b_du * b_z * b_sig
            b_dz = b_du * b_x * b_sig * (1.0 + b_z * (1.0 - b_sig))
            if SKIP:
                tl.store(dxs + rows[:, None] * stride_dxs + cols[None, :], (b_dx * b_d[None, :]).to(
                    dxs.dtype.element_ty), mask=mask)
                b_dd += tl.sum(b_dx * b_xs, axis=0)
            tl.store(dx + rows[:, None] * stride_dx + cols[None, :], b_dx.to(dx.dtype.element_ty), mask=mask)
            tl.store(dz + rows[:, None] * stride_dz + cols[None, :], b_dz.to(dz.dtype.element_ty), mask=mask)
        else:
            tl.store(dx + rows[:, None] * stride_dx + cols[None, :], b_du.to(dx.dtype.element_ty), mask=mask)
    tl.store(dw_part + pid * C + cols, b_dw, mask=col_ok)
    if SKIP:
        tl.store(dd_part + pid * C + cols, b_dd, mask=col_ok)


def _stride(t):
    return t.stride(0) if t is not None else 0


def _forward(x2, z2, r2, w, eps, out_dtype, xs2=None, d=None):
    """x2, z2, r2, xs2: [R, C] row views (or None). Returns y [R, C] and the new residual (ADD) or None."""
    R, C = x2.shape
    BR, BC, warps = _blocks(C)
    y = torch.empty(R, C, dtype=out_dtype, device=x2.device)
    s = torch.empty(R, C, dtype=r2.dtype, device=x2.device) if r2 is not None else None
    if R:
        rms_norm_fwd_kernel[(triton.cdiv(R, BR),)](
            x2, z2, r2, w, y, s, xs2, d,
            R, C, x2.stride(0), _stride(z2), _stride(r2), y.stride(0), _stride(s), _stride(xs2), eps,
            BR=BR, BC=BC, ADD=r2 is not None, GATED=z2 is not None, SKIP=xs2 is not None, num_warps=warps)
    return y, s


def _backward(x2, z2, w, dy2, ds2, eps, dx_dtype, dres_dtype, add: bool, xs2=None, d=None):
    """Returns dx, then dz (GATED) or dres (ADD) or None, dw in w's dtype, and (SKIP) dxs and dd, else None."""
    R, C = x2.shape
    BR, BC, warps = _blocks(C, backward=True)
    dev = x2.device
    programs = max(1, min(num_workers(dev), triton.cdiv(R, BR)))
    rows_per_program = triton.cdiv(triton.cdiv(R, programs), BR) * BR
    programs = max(1, triton.cdiv(R, rows_per_program))
    skip = xs2 is not None
    dx = torch.empty(R, C, dtype=dx_dtype, device=dev)
    dz = torch.empty(R, C, dtype=z2.dtype, device=dev) if z2 is not None else None
    dres = torch.empty(R, C, dtype=dres_dtype, device=dev) if add else None
    dw_part = torch.empty(programs, C, dtype=torch.float32, device=dev)
    dxs = torch.empty(R, C, dtype=xs2.dtype, device=dev) if skip else None
    dd_part = torch.empty(programs, C, dtype=torch.float32, device=dev) if skip else None
    if R:
        rms_norm_bwd_kernel[(programs,)](
            x2, z2, w, dy2, ds2, dx, dz, dres, dw_part, xs2, d, dxs, dd_part,
            R, C, rows_per_program, x2.stride(0), _stride(z2), dy2.stride(0), _stride(ds2), dx.stride(0),
            _stride(dz), _stride(dres), _stride(xs2), _stride(dxs), eps,
            BR=BR, BC=BC, ADD=add, GATED=z2 is not None, HAS_DS=ds2 is not None, SKIP=skip, num_warps=warps)
    else:
        dw_part.zero_()
        if skip:
            dd_part.zero_()
    dd = dd_part.sum(0).to(d.dtype) if skip else None
    return dx, dz if z2 is not None else dres, dw_part.sum(0).to(w.dtype), dxs, dd


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        x2 = as_rows(x)
        y, _ = _forward(x2, None, None, weight, eps, out_dtype)
        ctx.save_for_backward(x2, weight)
        ctx.eps, ctx.shape = eps, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dx, _, dw, _, _ = _backward(x2, None, weight, as_rows(dy), None, ctx.eps, x2.dtype, None, add=False)
        return dx.view(ctx.shape), dw, None, None


class AddRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, out_dtype):
        y, s = _forward(as_rows(x), None, as_rows(residual), weight, eps, out_dtype)
        # s is the block's output residual stream: saving it costs no extra memory
        ctx.save_for_backward(s, weight)
        ctx.eps, ctx.shape, ctx.x_dtype = eps, x.shape, x.dtype
        return y.view(x.shape), s.view(x.shape)

    @staticmethod
    def backward(ctx, dy, ds):
        s, weight = ctx.saved_tensors
        ds2 = None if ds is None else as_rows(ds)
        dx, dres, dw, _, _ = _backward(s, None, weight, as_rows(dy), ds2, ctx.eps, ctx.x_dtype, s.dtype, add=True)
        return dx.view(ctx.shape), dres.view(ctx.shape), dw, None, None


class GatedRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, weight, eps, out_dtype, skip, skip_scale):
        x2, z2 = as_rows(x), as_rows(gate)
        xs2 = None if skip is None else as_rows(skip)
        y, _ = _forward(x2, z2, None, weight, eps, out_dtype, xs2, skip_scale)
        ctx.save_for_backward(x2, z2, weight, xs2, skip_scale)
        ctx.eps, ctx.shape = eps, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, z2, weight, xs2, skip_scale = ctx.saved_tensors
        dx, dz, dw, dxs, dd = _backward(x2, z2, weight, as_rows(dy), None, ctx.eps, x2.dtype, None, add=False,
                                        xs2=xs2, d=skip_scale)
        dxs = None if dxs is None else dxs.view(ctx.shape)
        return dx.view(ctx.shape), dz.view(ctx.shape), dw, None, None, dxs, dd


def rms_norm_triton(x, weight, eps=1e-5, out_dtype=None):
    """Same contract as slimkv.ops.norm.rms_norm."""
    check_dtypes("rms_norm", x=x, weight=weight)
    return RMSNormFunction.apply(x, weight, float(eps), out_dtype or weight.dtype)


def add_rms_norm_triton(x, residual, weight, eps=1e-5, out_dtype=None):
    """Same contract as slimkv.ops.norm.add_rms_norm."""
    check_dtypes("add_rms_norm", x=x, residual=residual, weight=weight)
    return AddRMSNormFunction.apply(x, residual, weight, float(eps), out_dtype or weight.dtype)


def gated_rms_norm_triton(x, gate, weight, eps=1e-5, out_dtype=None, skip=None, skip_scale=None):
    """Same contract as slimkv.ops.norm.gated_rms_norm."""
    check_dtypes("gated_rms_norm", x=x, gate=gate, weight=weight, skip=skip, skip_scale=skip_scale)
    return GatedRMSNormFunction.apply(x, gate, weight, float(eps), out_dtype or weight.dtype, skip, skip_scale)
