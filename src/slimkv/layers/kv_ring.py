"""Ring buffers of keys and values for decode caches: token n (counting every slot, padding included) lives in slot
n % S, so S slots always hold the newest S tokens, and a static capacity of S >= every token is a plain KV cache.

legend: B batch, T new tokens, S slots, Hk key heads, Hv value heads, D head dim
"""
from __future__ import annotations

import torch


def ring_history(key_ring: torch.Tensor, value_ring: torch.Tensor, ring_valid: torch.Tensor, seen: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tokens held before token `seen`, oldest first: k [B, n, Hk, D], v [B, n, Hv, D], valid [B, n],
    n = min(seen, S). They sit right before the new tokens, so slot distance is token distance."""
    S = key_ring.shape[1]
    held = min(seen, S)
    order = torch.arange(seen - held, seen, device=key_ring.device) % S
    return key_ring[:, order], value_ring[:, order], ring_valid[:, order]


def ring_write(key_ring: torch.Tensor, value_ring: torch.Tensor, ring_valid: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, valid: torch.Tensor, seen: int) -> None:
    """Store tokens seen .. seen + T - 1 (keys [B, T, Hk, D], values [B, T, Hv, D], valid [B, T]) in their slots,
    in place; of a chunk longer than the ring only the newest S tokens are kept."""
    S, T = key_ring.shape[1], keys.shape[1]
    keep = min(S, T)
    slots = torch.arange(seen + T - keep, seen + T, device=key_ring.device) % S
    key_ring.index_copy_(1, slots, keys[:, T - keep:].to(key_ring.dtype))
    value_ring.index_copy_(1, slots, values[:, T - keep:].to(value_ring.dtype))
    ring_valid.index_copy_(1, slots, valid[:, T - keep:])
