"""RecurFormer branch `window` (streaming heads): the replaced heads keep their pretrained q/k/v rows but see only
the first `sinks` tokens (attention sinks) and the last `window` tokens, so their cache is constant-size.

legend: B batch, T time, d model width, R replaced query heads, G replaced KV units, D head dim, N = sinks + window

The cheap baseline the RecurFormer paper never ran (DuoAttention's streaming heads, StreamingLLM's sinks).
Decode state, one buffer of N slots per row: slots 0 .. sinks-1 hold the tokens at positions 0 .. sinks-1 (written
once), slots sinks .. N-1 a ring of the previous `window` tokens (token n at sinks + n % window, padding counted),
where sink tokens are marked invalid so nothing is seen twice. Attention over [sinks | ring | itself] is then exactly
window_attention(..., window, sinks) (ops/window_attn), which the sequence path uses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import decode as decode_ops
from ..ops.rope import apply_rope, rope_cos_sin
from ..ops.window_attn import window_attention
from .branches import BranchGeometry, ReplacedHeads, copy_rows, register_branch
from .kv_ring import ring_history, ring_write


@register_branch("window")
class WindowBranch(nn.Module):
    pretrained = True

    def __init__(self, geometry: BranchGeometry, window: int = 64, sinks: int = 4, attn_backend: str = "auto",
                 decode_backend: str = "auto"):
        super().__init__()
        if window < 1 or sinks < 0:
            raise ValueError(f"the window branch needs window >= 1 and sinks >= 0; got {window}, {sinks}")
        if geometry.source_window is not None:
            # never let a replaced head see further back than the source model's own sliding window
            window = min(window, geometry.source_window)
        self.num_heads, self.num_kv_heads, self.head_dim = geometry.num_heads, geometry.num_units, geometry.head_dim
        self.window, self.sinks = window, sinks
        self.attn_backend, self.decode_backend = attn_backend, decode_backend
        d, R, G, D = geometry.hidden_size, geometry.num_heads, geometry.num_units, geometry.head_dim
        self.q_proj = nn.Linear(d, R * D, bias=geometry.bias)
        self.k_proj = nn.Linear(d, G * D, bias=geometry.bias)
        self.v_proj = nn.Linear(d, G * D, bias=geometry.bias)

    @property
    def slots(self) -> int:
        return self.sinks + self.window

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        kv = (batch_size, self.slots, self.num_kv_heads, self.head_dim)
        return {"branch_key": kv, "branch_value": kv, "branch_valid": (batch_size, self.slots)}

    @torch.no_grad()
    def init_from_heads(self, heads: ReplacedHeads, init: str) -> None:
        """The replaced heads' own rows, whatever the init (nothing here is new)."""
        copy_rows(self.q_proj, heads.q_weight, heads.q_bias)
        copy_rows(self.k_proj, heads.k_weight, heads.k_bias)
        copy_rows(self.v_proj, heads.v_weight, heads.v_bias)

    def forward(self, h, rope, positions, padding_mask=None, state=None, seen: int = 0):
        """[B, T, d] -> [B, T, R, D]; see layers/branches.py for the arguments."""
        B, T, _ = h.shape
        D = self.head_dim
        cos, sin = rope
        q = apply_rope(self.q_proj(h).unflatten(-1, (-1, D)), cos, sin)
        k = apply_rope(self.k_proj(h).unflatten(-1, (-1, D)), cos, sin)
        v = self.v_proj(h).unflatten(-1, (-1, D))
        if state is None:
            # evaluations meet many lengths: bucketed so the flex kernel compiles a few (ops/window_attn/flex.py)
            return window_attention(q, k, v, self.window, key_padding_mask=padding_mask, backend=self.attn_backend,
                                    sinks=self.sinks, bucket_lengths=True)
        valid = padding_mask if padding_mask is not None else torch.ones(B, T, dtype=torch.bool, device=h.device)
        keys, values, real = state["branch_key"], state["branch_value"], state["branch_valid"]
        S = self.sinks
        # what the cache holds goes in front as keys only: [sinks | ring oldest first | new]
        old_k, old_v, old_valid = ring_history(keys[:, S:], values[:, S:], real[:, S:], seen)
        front = S + old_k.shape[1]
        out = window_attention(torch.cat([q.new_zeros(B, front, *q.shape[2:]), q], 1),
                               torch.cat([keys[:, :S], old_k, k], 1), torch.cat([values[:, :S], old_v, v], 1),
                               self.window, key_padding_mask=torch.cat([real[:, :S], old_valid, valid], 1),
                               backend=self.attn_backend, sinks=S, bucket_lengths=True)[:, front:]
        is_sink = valid & (positions < S)
        if S:
            # token at position p < sinks -> sink slot p (a one-hot sum over the new tokens picks it exactly)
            hit = (positions[:, :, None] == torch.arange(S, device=h.device)) & is_sink[:, :, None]  # [B, T, S]
            weights = hit.to(k.dtype)
            keys[:, :S] = torch.where(hit.any(1)[..., None, None], torch.einsum("bts,btgd->bsgd", weights, k),
                                      keys[:, :S])
            values[:, :S] = torch.where(hit.any(1)[..., None, None], torch.einsum("bts,btgd->bsgd", weights, v),
                                        values[:, :S])
            real[:, :S] |= hit.any(1)
        ring_write(keys[:, S:], values[:, S:], real[:, S:], k, v, valid & ~is_sink, seen)
        return out

    @torch.no_grad()
    def step(self, h, positions, inv_freq, state, seen):
        """One token: [B, d] -> [B, R, D]; sink slot / ring updated in place (ops/decode window_step)."""
        B, D, S = h.shape[0], self.head_dim, self.sinks
        q = F.linear(h, self.q_proj.weight, self.q_proj.bias).view(B, -1, D)
        k = F.linear(h, self.k_proj.weight, self.k_proj.bias).view(B, -1, D)
        v = F.linear(h, self.v_proj.weight, self.v_proj.bias).view(B, -1, D)
        keys, values, real = state["branch_key"], state["branch_value"], state["branch_valid"]
        is_sink = positions < S
        if S:
            # a prompt shorter than the sinks: this token becomes sink `position` (and attends to itself there)
            hit = (positions[:, None] == torch.arange(S, device=h.device))[..., None, None]  # [B, S, 1, 1]
            cos, sin = rope_cos_sin(positions[:, None], 0, inv_freq=inv_freq, dtype=torch.float32)
            rotated = apply_rope(k[:, None], cos, sin)  # [B, 1, G, D]
            keys[:, :S] = torch.where(hit, rotated, keys[:, :S])
            values[:, :S] = torch.where(hit, v[:, None], values[:, :S])
            real[:, :S] |= hit[:, :, 0, 0]
        slot = S + torch.remainder(seen, self.window)
        return decode_ops.window_step(q, k, v, inv_freq, positions, keys, values, real, slot, ~is_sink,
                                      backend=self.decode_backend)
