"""Fused causal depthwise conv + bias + SiLU (forward and backward) for the DDTS mixer, with carried state.

legend: B batch, T time, C channels, K kernel size, BT time block, BC channel block, P = B * cdiv(T, BT)

With xp the padded input (K - 1 carried inputs, oldest first, in front of x; zeros without a state):
    a[t] = bias + sum_{j < K} w[j] * xp[t + j]            (xp[t + K - 1] = x[t])
    y[t] = SiLU(a[t])
    final state = xp[T .. T + K - 2], the last K - 1 inputs (written by the first time block's programs)
Backward, with da[t] = dy[t] * SiLU'(a[t]) recomputed from x (a is never saved):
    dx[t]     = sum_j w[j] * da[t + K - 1 - j]  (+ the final state's gradient for the last K - 1 steps)
    dw[j]     = sum_t da[t] * xp[t + j],  dbias = sum_t da[t]      (per-program partials [P, K, C], summed by torch)
    dstate[i] = sum_{j <= i} w[j] * da[i - j]  (+ the final state's gradient when T < K - 1)
Each program recomputes a[t + s] for the K shifts s it needs (K^2 tap loads per tile, served from cache), so the
backward reads x and dy once from memory and writes dx once.
Taps and SiLU run in float32 (the weights in their own dtype); x's dtype rounds the carried state, as
ops/conv/__init__.py's causal_conv1d does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..rows import check_dtypes

MAX_BT = 16
MAX_BC = 128


@triton.jit
def _row_offsets(t, stride, I64: tl.constexpr):
    """t[:, None] * stride, in int64 only when a batch row's offsets can pass 2^31 (int32 tiles take half the
    registers)."""
    off = t[:, None] * stride
    if I64:
        off = t[:, None].to(tl.int64) * stride
    return off


@triton.jit
def _padded_inputs(x, state, b, t_src, cols, c_ok, T, sxb, sxt, ssb, ssc, ssk,
                   K: tl.constexpr, HAS_STATE: tl.constexpr, I64: tl.constexpr):
    """xp at times t_src ([N], x's index: negative = carried) for channels cols -> [N, BC] float32."""
    in_x = (t_src >= 0) & (t_src < T)
    b_v = tl.load(x + b * sxb + _row_offsets(t_src, sxt, I64) + cols[None, :],
                  mask=in_x[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    if HAS_STATE:
        in_s = (t_src < 0) & (t_src >= 1 - K)
        b_s = tl.load(state + b * ssb + cols[None, :] * ssc + (t_src + K - 1)[:, None] * ssk,
                      mask=in_s[:, None] & c_ok[None, :], other=0.0)
        b_v += b_s.to(x.dtype.element_ty).to(tl.float32)
    return b_v


@triton.jit
def _preactivation(x, w, bias, state, b, t, cols, c_ok, T, sxb, sxt, ssb, ssc, ssk,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, BT: tl.constexpr,
                   BC: tl.constexpr, I64: tl.constexpr):
    """a at times t ([BT]) -> [BT, BC] float32."""
    b_a = tl.zeros([BT, BC], dtype=tl.float32)
    if HAS_BIAS:
        b_a += tl.load(bias + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    # a runtime loop, not unrolled: unrolled, the compiler hoists every tap's loads and runs out of registers
    for j in range(K):
        b_wj = tl.load(w + cols * K + j, mask=c_ok, other=0.0).to(tl.float32)
        b_a += _padded_inputs(x, state, b, t + j - (K - 1), cols, c_ok, T, sxb, sxt, ssb, ssc, ssk,
                              K, HAS_STATE, I64) * b_wj[None, :]
    return b_a


@triton.jit
def conv_silu_fwd_kernel(
    x, w, bias, state, y, final,
    T, C, sxb, sxt, ssb, ssc, ssk, syb, syt, sfb, sfc, sfk,
    K: tl.constexpr, KS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, STORE_FINAL: tl.constexpr, I64: tl.constexpr,
):
    """Grid (cdiv(T, BT), cdiv(C, BC), B). KS: power of two >= K - 1 (rows of the final-state tile)."""
    tb = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    b = tl.program_id(2).to(tl.int64)
    c_ok = cols < C
    t = tb * BT + tl.arange(0, BT)
    b_a = _preactivation(x, w, bias, state, b, t, cols, c_ok, T, sxb, sxt, ssb, ssc, ssk,
                         K, HAS_BIAS, HAS_STATE, BT, BC, I64)
    b_y = b_a * tl.sigmoid(b_a)
    tl.store(y + b * syb + _row_offsets(t, syt, I64) + cols[None, :], b_y.to(y.dtype.element_ty),
             mask=(t < T)[:, None] & c_ok[None, :])
    if STORE_FINAL:
        if tb == 0:
            i = tl.arange(0, KS)
            b_f = _padded_inputs(x, state, b, T - (K - 1) + i, cols, c_ok, T, sxb, sxt, ssb, ssc, ssk, K, HAS_STATE,
                                 I64)
            tl.store(final + b * sfb + cols[None, :] * sfc + i[:, None] * sfk, b_f.to(final.dtype.element_ty),
                     mask=(i < K - 1)[:, None] & c_ok[None, :])


@triton.jit
def conv_silu_bwd_kernel(
    x, w, bias, state, dy, dfinal, dx, dstate, dw_part, db_part,
    T, C, num_tb, sxb, sxt, ssb, ssc, ssk, sdyb, sdyt, sfb, sfc, sfk, sdxb, sdxt, sdsb, sdsc, sdsk,
    K: tl.constexpr, KP: tl.constexpr, KS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, HAS_DFINAL: tl.constexpr, STORE_DSTATE: tl.constexpr,
    I64: tl.constexpr,
):
    """Grid (cdiv(T, BT), cdiv(C, BC), B). dw_part [P, K, C], db_part [P, C] fp32; dstate [B, C, K - 1].
    KP: power of two >= K (rows of the dw tile)."""
    tb = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    b = tl.program_id(2).to(tl.int64)
    c_ok = cols < C
    t = tb * BT + tl.arange(0, BT)
    t_ok = t < T
    # this program's own outputs first (shift 0): dx's last tap, weight and bias partials, the state's gradient
    b_a = _preactivation(x, w, bias, state, b, t, cols, c_ok, T, sxb, sxt, ssb, ssc, ssk,
                         K, HAS_BIAS, HAS_STATE, BT, BC, I64)
    b_sig = tl.sigmoid(b_a)
    b_dy = tl.load(dy + b * sdyb + _row_offsets(t, sdyt, I64) + cols[None, :],
                   mask=t_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    b_da = b_dy * b_sig * (1.0 + b_a * (1.0 - b_sig))
    b_dx = b_da * tl.load(w + cols * K + (K - 1), mask=c_ok, other=0.0).to(tl.float32)[None, :]
    taps = tl.arange(0, KP)
    b_dw = tl.zeros([KP, BC], dtype=tl.float32)
    for j in range(K):
        b_xj = _padded_inputs(x, state, b, t + j - (K - 1), cols, c_ok, T, sxb, sxt, ssb, ssc, ssk, K, HAS_STATE,
                              I64)
        b_dw += tl.where(taps[:, None] == j, tl.sum(b_da * b_xj, axis=0)[None, :], 0.0)
    part = b * num_tb + tb
    tl.store(dw_part + part * K * C + taps[:, None] * C + cols[None, :], b_dw, mask=(taps < K)[:, None] & c_ok[None, :])
    if HAS_BIAS:
        tl.store(db_part + part * C + cols, tl.sum(b_da, axis=0), mask=c_ok)
    if STORE_DSTATE:
        if tb == 0:
            i = tl.arange(0, KS)
            b_ds = tl.zeros([KS, BC], dtype=tl.float32)
            for tap in tl.static_range(K - 1):
                b_wt = tl.load(w + cols * K + tap, mask=c_ok, other=0.0).to(tl.float32)
                for slot in tl.static_range(tap, K - 1):
                    # dstate[slot] += w[tap] * da[slot - tap]
                    b_row = tl.sum(tl.where((t == slot - tap)[:, None], b_da, 0.0), axis=0)
                    b_ds += tl.where((i == slot)[:, None], (b_wt * b_row)[None, :], 0.0)
            if HAS_DFINAL:
                # final[i - T] is state slot i when the sequence is shorter than the state
                f_ok = (i >= T) & (i < K - 1)
                b_ds += tl.load(dfinal + b * sfb + cols[None, :] * sfc + (i - T)[:, None] * sfk,
                                mask=f_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            tl.store(dstate + b * sdsb + cols[None, :] * sdsc + i[:, None] * sdsk,
                     b_ds.to(dstate.dtype.element_ty), mask=(i < K - 1)[:, None] & c_ok[None, :])
    # then the later outputs: da at t + s reaches dx[t] through tap K - 1 - s
    for s in range(1, K):
        r = t + s
        b_a = _preactivation(x, w, bias, state, b, r, cols, c_ok, T, sxb, sxt, ssb, ssc, ssk,
                             K, HAS_BIAS, HAS_STATE, BT, BC, I64)
        b_sig = tl.sigmoid(b_a)
        b_dy = tl.load(dy + b * sdyb + _row_offsets(r, sdyt, I64) + cols[None, :],
                       mask=(r < T)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        b_da = b_dy * b_sig * (1.0 + b_a * (1.0 - b_sig))
        b_dx += b_da * tl.load(w + cols * K + (K - 1 - s), mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_DFINAL:
        # x[t] is final-state slot t - (T - K + 1) for the last K - 1 steps
        f = t - (T - (K - 1))
        f_ok = (f >= 0) & (f < K - 1) & t_ok
        b_dx += tl.load(dfinal + b * sfb + cols[None, :] * sfc + f[:, None] * sfk,
                        mask=f_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    tl.store(dx + b * sdxb + _row_offsets(t, sdxt, I64) + cols[None, :], b_dx.to(dx.dtype.element_ty),
             mask=t_ok[:, None] & c_ok[None, :])


def _blocks(T: int, C: int, K: int) -> tuple[int, int, int, int]:
    """(BT, BC, KP, KS)."""
    BT = min(MAX_BT, triton.next_power_of_2(T))
    BC = min(MAX_BC, triton.next_power_of_2(C))
    return BT, BC, triton.next_power_of_2(K), max(1, triton.next_power_of_2(K - 1))


def _needs_int64(T: int, C: int, *tensors: torch.Tensor | None) -> bool:
    """Whether offsets inside one batch row (time x time stride + channel) can reach 2^31."""
    return any(t is not None and T * t.stride(1) + C >= 2**31 for t in tensors)


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


class ConvSiluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, output_final_state):
        B, T, C = x.shape
        K = weight.shape[-1]
        BT, BC, KP, KS = _blocks(T, C, K)
        if x.stride(-1) != 1:
            x = x.contiguous()
        weight = weight.contiguous()
        y = torch.empty(B, T, C, dtype=x.dtype, device=x.device)
        final = torch.empty(B, C, K - 1, dtype=x.dtype, device=x.device) if output_final_state else None
        grid = (triton.cdiv(T, BT), triton.cdiv(C, BC), B)
        conv_silu_fwd_kernel[grid](
            x, weight, bias, initial_state, y, final,
            T, C, x.stride(0), x.stride(1), *_strides3(initial_state), y.stride(0), y.stride(1), *_strides3(final),
            K=K, KS=KS, BT=BT, BC=BC, HAS_BIAS=bias is not None, HAS_STATE=initial_state is not None,
            STORE_FINAL=output_final_state, I64=_needs_int64(T, C, x, y), num_warps=4)
        ctx.save_for_backward(x, weight, bias, initial_state)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, weight, bias, state = ctx.saved_tensors
        B, T, C = x.shape
        K = weight.shape[-1]
        BT, BC, KP, KS = _blocks(T, C, K)
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        dev = x.device
        num_tb = triton.cdiv(T, BT)
        dx = torch.empty(B, T, C, dtype=x.dtype, device=dev)
        want_dstate = state is not None and ctx.needs_input_grad[3]
        dstate = torch.empty(state.shape, dtype=state.dtype, device=dev) if want_dstate else None
        dw_part = torch.empty(B * num_tb, K, C, dtype=torch.float32, device=dev)
        db_part = torch.empty(B * num_tb, C, dtype=torch.float32, device=dev) if bias is not None else None
        conv_silu_bwd_kernel[(num_tb, triton.cdiv(C, BC), B)](
            x, weight, bias, state, dy, dfinal, dx, dstate, dw_part, db_part,
            T, C, num_tb, x.stride(0), x.stride(1), *_strides3(state), dy.stride(0), dy.stride(1),
            *_strides3(dfinal), dx.stride(0), dx.stride(1), *_strides3(dstate),
            K=K, KP=KP, KS=KS, BT=BT, BC=BC, HAS_BIAS=bias is not None, HAS_STATE=state is not None,
            HAS_DFINAL=dfinal is not None, STORE_DSTATE=want_dstate, I64=_needs_int64(T, C, x, dy, dx),
            num_warps=4)
        dw = dw_part.sum(0).t().to(weight.dtype)
        db = db_part.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw, db, dstate, None


def causal_conv1d_silu_triton(x, weight, bias=None, initial_state=None, output_final_state=False):
    """Same contract as slimkv.ops.conv.causal_conv1d_silu (T >= 1)."""
    check_dtypes("causal_conv1d_silu", x=x, weight=weight, bias=bias, initial_state=initial_state)
    return ConvSiluFunction.apply(x, weight, bias, initial_state, output_final_state)
