"""Spec of gated linear attention: a plain loop over time. Slow, exact, float64-capable.

legend: B batch, T time, H heads, K key dim, V value dim

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t          S: [K, V] per (batch, head)
    o_t = scale * q_t S_t

g_t <= 0 is the log-decay, either per key channel ([B, T, H, K]) or one per head ([B, T, H]).
"""
from __future__ import annotations

import torch


def gla_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    # accumulate in float32 unless the caller asked for float64
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out_dtype = q.dtype
    q, k, v, g = (x.to(acc) for x in (q, k, v, log_decay))
    if g.dim() == 3:
        g = g.unsqueeze(-1).expand(B, T, H, K)
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc).clone()
    out = q.new_empty(B, T, H, V)
    for t in range(T):
        state = state * g[:, t].exp().unsqueeze(-1) + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        out[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state)
    return out.to(out_dtype), (state if output_final_state else None)
