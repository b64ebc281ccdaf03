"""One decoding step of gated linear attention: the T = 1 case of the recurrence, for every backend.

legend: B batch, H heads, K key dim, V value dim

    S' = diag(exp(g)) S + k^T v,    o = scale * q S'
"""
from __future__ import annotations

import torch


def gla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of gated linear attention.

    Args:
        q, k: [B, H, K].  v: [B, H, V].
        log_decay: [B, H, K] (per key channel) or [B, H] (per head); <= 0.
        state: [B, H, K, V], the state after the previous token (zeros before the first one).
        scale: query scale, default K ** -0.5.
    Returns:
        o [B, H, V] in q's dtype, and the new state [B, H, K, V] (float32, float64 for float64 q). `state` is not
        modified in place.

    Example:
        >>> state = torch.zeros(B, H, K, V)
        >>> for t in range(T):
        ...     o_t, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state)
    """
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"gla_step: q and k must both be [B, H, K]; got {tuple(q.shape)} and {tuple(k.shape)}")
    B, H, K = q.shape
    if v.dim() != 3 or v.shape[:2] != (B, H):
        raise ValueError(f"gla_step: v must be [B, H, V] matching q {tuple(q.shape)}; got {tuple(v.shape)}")
    if log_decay.shape not in (q.shape, (B, H)):
        raise ValueError(f"gla_step: log_decay must be [B, H, K] or [B, H]; got {tuple(log_decay.shape)}")
    if state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(f"gla_step: state must be [B, H, K, V] = {(B, H, K, v.shape[-1])}; got {tuple(state.shape)}")
    scale = K**-0.5 if scale is None else scale
    # same precision rule and the same operations as the reference loop, so T = 1 agrees with it bit for bit
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_a, k_a, v_a, g_a = (x.to(acc) for x in (q, k, v, log_decay))
    if g_a.dim() == 2:
        g_a = g_a.unsqueeze(-1).expand(B, H, K)
    new_state = state.to(acc) * g_a.exp().unsqueeze(-1) + k_a.unsqueeze(-1) * v_a.unsqueeze(-2)
    o = scale * torch.einsum("bhk,bhkv->bhv", q_a, new_state)
    return o.to(q.dtype), new_state
