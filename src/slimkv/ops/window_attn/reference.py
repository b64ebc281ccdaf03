"""Spec of windowed causal softmax attention: one dense [T, T] mask. Slow, exact, float64-capable.

legend: B batch, T time, H query heads, Hk key heads, Hv value heads, D key dim, Dv value dim

    query i sees key j  <=>  j <= i  and  key_padding_mask[b, j]  and  (i - window <= j  or  rank_j < sinks)
    o_i = sum_j softmax_j(scale * q_i . k_j) v_j   (over the keys query i sees; zeros if it sees none)

rank_j counts the real keys before j in its row, so the `sinks` attention sinks are each row's first real tokens
(left padding does not shift them).

Query head h reads key head h // (H // Hk) and value head h // (H // Hv): Hk = 1 with Hv = H is SW-SKA's shared
key with one value per head, Hk = Hv < H is GQA, all equal is MHA.
"""
from __future__ import annotations

import torch


def window_mask(T: int, window: int | None, device: torch.device | None = None) -> torch.Tensor:
    """[T, T] bool, True where query i (row) may see key j (column): causal, at most `window` previous keys."""
    query_pos = torch.arange(T, device=device).unsqueeze(1)
    key_pos = torch.arange(T, device=device).unsqueeze(0)
    allowed = key_pos <= query_pos
    if window is not None:
        allowed = allowed & (key_pos >= query_pos - window)
    return allowed


def expand_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, Hx, E] -> [B, T, H, E]: each of the Hx heads serves H // Hx consecutive query heads."""
    return x.repeat_interleave(num_heads // x.shape[2], dim=2)


def key_ranks(T: int, key_padding_mask: torch.Tensor | None, device: torch.device | None = None) -> torch.Tensor:
    """[B, T] (or [1, T] without padding) long: how many real keys come before each key in its row."""
    if key_padding_mask is None:
        return torch.arange(T, device=device).unsqueeze(0)
    return key_padding_mask.long().cumsum(-1) - key_padding_mask.long()


def window_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    sinks: int = 0,
) -> torch.Tensor:
    """q [B, T, H, D], k [B, T, Hk, D], v [B, T, Hv, Dv], key_padding_mask [B, T] (True = real) -> [B, T, H, Dv];
    each query also sees its row's first `sinks` real keys."""
    B, T, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    # softmax in float32 unless the caller asked for float64
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), expand_heads(k, H).to(acc), expand_heads(v, H).to(acc)
    # [B, H, T, T]
    scores = scale * torch.einsum("bihd,bjhd->bhij", qf, kf)
    allowed = window_mask(T, window, q.device).view(1, 1, T, T)
    if sinks and window is not None:
        is_sink = (key_ranks(T, key_padding_mask, q.device) < sinks).view(-1, 1, 1, T)
        allowed = allowed | (is_sink & window_mask(T, None, q.device).view(1, 1, T, T))
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.view(B, 1, 1, T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # a row that sees no key would be softmax(all -inf) = NaN: give it finite scores, then zero it by the mask
    sees_nothing = ~allowed.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(sees_nothing, 0.0)
    probs = torch.softmax(scores, dim=-1) * allowed
    return torch.einsum("bhij,bjhe->bihe", probs, vf).to(q.dtype)
