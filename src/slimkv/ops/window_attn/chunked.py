"""Windowed causal attention in query blocks: the CPU/default backend. Pure PyTorch, float64-capable.

legend: B batch, T time, H query heads, Hk key heads, Hv value heads, D key dim, Dv value dim,
        C query block (chunk), L keys one block reads (at most C + window)

Query block [s, e) can only see keys in [s - window, e), so each block multiplies against that slice alone:
memory O(T * (C + window)) per head instead of O(T^2), and the same masked softmax as the spec on each slice.
Heads that share a key (or value) head are folded into the row dimension of one matmul, so a shared key is
never copied H times.

Attention sinks (`sinks` > 0): each row's first `sinks` real keys are gathered once and put in front of every block's
key slice, masked off where the slice already holds them, so a block reads at most sinks + C + window keys.
"""
from __future__ import annotations

import torch

from .reference import key_ranks


def window_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    chunk_size: int = 128,
    sinks: int = 0,
) -> torch.Tensor:
    """q [B, T, H, D], k [B, T, Hk, D], v [B, T, Hv, Dv], key_padding_mask [B, T] (True = real) -> [B, T, H, Dv];
    each query also sees its row's first `sinks` real keys."""
    B, T, H, D = q.shape
    Hk, Hv, Dv = k.shape[2], v.shape[2], v.shape[3]
    scale = D**-0.5 if scale is None else scale
    # softmax in float32 unless the caller asked for float64
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    # [B, H, T, D], [B, Hk, T, D], [B, Hv, T, Dv]
    q_heads = q.transpose(1, 2).to(acc)
    k_heads = k.transpose(1, 2).to(acc)
    v_heads = v.transpose(1, 2).to(acc)
    positions = torch.arange(T, device=q.device)
    sink_slots = sink_k = sink_v = is_sink = None
    if sinks and window is not None:
        # [B', T]: keys that every later query sees, wherever they are (B' = 1 without padding)
        is_sink = key_ranks(T, key_padding_mask, q.device) < sinks
        sink_slots, sink_real = _sink_slots(T, sinks, key_padding_mask, q.device)  # [B', S]
        index = sink_slots.clamp(max=T - 1)
        gather = lambda heads: heads.gather(2, index[:, None, :, None].expand(B, heads.shape[1], -1, heads.shape[3]))
        sink_k, sink_v = gather(k_heads), gather(v_heads)
    blocks = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        key_start = 0 if window is None else max(0, start - window)
        C, L = end - start, end - key_start
        # [B, Hk, (H/Hk) * C, D] @ [B, Hk, D, L]: query heads sharing a key head become extra rows
        q_block = q_heads[:, :, start:end].reshape(B, Hk, (H // Hk) * C, D)
        scores = scale * (q_block @ k_heads[:, :, key_start:end].transpose(-1, -2))
        scores = scores.view(B, H, C, L)
        query_pos = positions[start:end].unsqueeze(1)
        key_pos = positions[key_start:end].unsqueeze(0)
        # [C, L] -> broadcast to [B, 1, C, L] when padding is given
        allowed = key_pos <= query_pos
        if window is not None:
            in_window = key_pos >= query_pos - window
            if is_sink is not None:
                # a sink inside the slice but beyond the window is still seen
                in_window = in_window | is_sink[:, key_start:end].view(-1, 1, 1, L)
            allowed = allowed & in_window
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, key_start:end].view(B, 1, 1, L)
        v_block = v_heads[:, :, key_start:end]
        if sink_k is not None and key_start > 0:
            # sinks left of the slice: [B, Hk, (H/Hk) * C, S] scores in front, seen by every query of the block
            sink_scores = scale * (q_block @ sink_k.transpose(-1, -2))
            scores = torch.cat([sink_scores.view(B, H, C, sinks), scores], dim=-1)
            sink_seen = (sink_real & (sink_slots < key_start)).view(-1, 1, 1, sinks)
            allowed = torch.cat([sink_seen.expand(B, 1, C, sinks), allowed.expand(B, 1, C, L)], dim=-1)
            v_block = torch.cat([sink_v, v_block], dim=2)
        scores = scores.masked_fill(~allowed, float("-inf"))
        if key_padding_mask is not None or sink_k is not None:
            # a row that sees no key would be softmax(all -inf) = NaN: give it finite scores, then zero it by the mask
            sees_nothing = ~allowed.any(dim=-1, keepdim=True)
            probs = torch.softmax(scores.masked_fill(sees_nothing, 0.0), dim=-1) * allowed
        else:
            probs = torch.softmax(scores, dim=-1)
        # [B, Hv, (H/Hv) * C, L] @ [B, Hv, L, Dv]
        out = probs.reshape(B, Hv, (H // Hv) * C, -1) @ v_block
        blocks.append(out.view(B, H, C, Dv))
    return torch.cat(blocks, dim=2).transpose(1, 2).to(q.dtype)


def _sink_slots(T: int, sinks: int, key_padding_mask: torch.Tensor | None,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots of each row's first `sinks` real keys, [B, sinks] long (T where a row has fewer), and whether they exist."""
    if key_padding_mask is None:
        slots = torch.arange(sinks, device=device).unsqueeze(0)
        return slots.clamp(max=T), slots < T
    ranks = key_padding_mask.long().cumsum(-1) - 1  # [B, T]: rank of each real key
    wanted = torch.arange(sinks, device=device).view(1, sinks, 1)
    hit = (ranks.unsqueeze(1) == wanted) & key_padding_mask.unsqueeze(1)  # [B, sinks, T]
    exists = hit.any(-1)
    slots = torch.where(exists, hit.long().argmax(-1), torch.full_like(exists, T, dtype=torch.long))
    return slots, exists
