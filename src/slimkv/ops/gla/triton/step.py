"""Fused single-token decode step of gated linear attention.

legend: B batch, H heads, K key dim, V value dim, BK key block (all of K), BV value tile

    S' = diag(exp(g)) S + k^T v,    o = scale * q S'

One program per (batch * head, V tile): the state tile is read once and written once, so the step runs at memory
speed; decay, outer product and the query contraction all happen in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gla_step_kernel(
    q, k, v, g, state, new_state, o, scale,
    K, V, BK: tl.constexpr, BV: tl.constexpr, HEAD_DECAY: tl.constexpr,
):
    """Grid (B * H, cdiv(V, BV)). state/new_state [B, H, K, V] fp32 (may alias)."""
    bh = tl.program_id(0).to(tl.int64)
    iv = tl.program_id(1)
    kcols = tl.arange(0, BK)
    vcols = iv * BV + tl.arange(0, BV)
    k_ok = kcols < K
    v_ok = vcols < V
    b_q = tl.load(q + bh * K + kcols, mask=k_ok, other=0.0).to(tl.float32)
    b_k = tl.load(k + bh * K + kcols, mask=k_ok, other=0.0).to(tl.float32)
    b_v = tl.load(v + bh * V + vcols, mask=v_ok, other=0.0).to(tl.float32)
    if HEAD_DECAY:
        b_decay = tl.exp(tl.load(g + bh).to(tl.float32))
        b_decay = tl.zeros([BK], dtype=tl.float32) + b_decay
    else:
        b_decay = tl.exp(tl.load(g + bh * K + kcols, mask=k_ok, other=0.0).to(tl.float32))
    state_off = bh * K * V + kcols[:, None] * V + vcols[None, :]
    state_mask = k_ok[:, None] & v_ok[None, :]
    b_S = tl.load(state + state_off, mask=state_mask, other=0.0)
    b_S = b_S * b_decay[:, None] + b_k[:, None] * b_v[None, :]
    tl.store(new_state + state_off, b_S, mask=state_mask)
    b_o = tl.sum(b_S * b_q[:, None], axis=0) * scale
    tl.store(o + bh * V + vcols, b_o.to(o.dtype.element_ty), mask=v_ok)


def gla_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of gated linear attention in one kernel (same contract as `slimkv.ops.gla.gla_step`).

    Args:
        q, k: [B, H, K].  v: [B, H, V].  log_decay: [B, H, K] or [B, H] (<= 0).
        state: [B, H, K, V] float32.
        inplace: write the new state into `state` (fixed addresses, for CUDA-graph decoding).
    Returns:
        o [B, H, V] in q's dtype, new state [B, H, K, V] float32.
    """
    B, H, K = q.shape
    V = v.shape[-1]
    if state.shape != (B, H, K, V) or state.dtype != torch.float32:
        raise ValueError(f"gla_step_triton: state must be float32 [B, H, K, V] = {(B, H, K, V)}; "
                         f"got {state.dtype} {tuple(state.shape)}")
    if log_decay.shape not in (q.shape, (B, H)):
        raise ValueError(f"gla_step_triton: log_decay must be [B, H, K] or [B, H]; got {tuple(log_decay.shape)}")
    scale = K**-0.5 if scale is None else scale
    q, k, v, log_decay, state = (x.contiguous() for x in (q, k, v, log_decay, state))
    new_state = state if inplace else torch.empty_like(state)
    o = torch.empty(B, H, V, dtype=q.dtype, device=q.device)
    BK = max(triton.next_power_of_2(K), 16)
    BV = min(max(triton.next_power_of_2(V), 16), max(16, 8192 // BK))
    grid = (B * H, triton.cdiv(V, BV))
    gla_step_kernel[grid](q, k, v, log_decay, state, new_state, o, scale,
                          K=K, V=V, BK=BK, BV=BV, HEAD_DECAY=log_decay.dim() == 2, num_warps=4)
    return o, new_state
