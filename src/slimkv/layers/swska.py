"""Sliding-window shared-key attention (SW-SKA): H query heads, ONE key head, H value heads.

legend: B batch, T time, H heads, D head dim, S ring-buffer slots

Window semantics (slimkv's choice, docs/rodimus.md section 2): query i sees keys i - w .. i with w = W // 2
(W = config window_size), i.e. the official TRAINING semantics. Training, prefill and decode all use it. The decode
ring buffer holds the w previous tokens (the official W/2 buffer size); the current token is attended before it is
written, so no key is lost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import decode as decode_ops
from ..ops.rope import apply_rope, rope_cos_sin, rope_inv_freq
from ..ops.window_attn import window_attention


class SharedKeyAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, window: int | None, rope_theta: float = 10000.0,
                 rotary_dim: int | None = None, attn_backend: str = "auto", decode_backend: str = "auto"):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.window = window  # previous tokens visible to each query
        self.rope_theta = rope_theta
        self.rotary_dim = rotary_dim or self.head_dim
        self.attn_backend = attn_backend
        self.decode_backend = decode_backend
        self._inv_freq: dict[tuple, torch.Tensor] = {}
        self._qkv: tuple | None = None
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None, init=nn.init) -> None:
        """normal(std) for q/k/v, normal(residual_std) for the output projection (the model picks the scale)."""
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            init.normal_(lin.weight, mean=0.0, std=std)
        init.normal_(self.o_proj.weight, mean=0.0, std=std if residual_std is None else residual_std)

    @property
    def ring_slots(self) -> int:
        if self.window is None:
            raise ValueError("a full-attention SW-SKA layer has no bounded ring buffer")
        return max(self.window, 1)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        S = self.ring_slots
        return {"key_ring": (batch_size, S, 1, self.head_dim),
                "value_ring": (batch_size, S, self.num_heads, self.head_dim),
                "ring_valid": (batch_size, S)}

    def forward(self, h: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None = None,
                ring: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, seen: int = 0):
        """h [B, T, d]; positions [B, T] (RoPE positions of real tokens); padding_mask [B, T] (True = real).

        ring: (key_ring [B, S, 1, D], value_ring [B, S, H, D], ring_valid [B, S]) holding the tokens at absolute
        indices < seen, token n in slot n % S; `seen` counts every earlier token of the batch, padding included.
        Returns (out [B, T, d], new ring or None).
        """
        B, T, _ = h.shape
        q = self.q_proj(h).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(h).view(B, T, 1, self.head_dim)
        v = self.v_proj(h).view(B, T, self.num_heads, self.head_dim)
        rope_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        cos, sin = rope_cos_sin(positions, self.rotary_dim, self.rope_theta, dtype=rope_dtype, device=h.device)
        q, k = apply_rope(q, cos, sin).to(h.dtype), apply_rope(k, cos, sin).to(h.dtype)
        valid = padding_mask if padding_mask is not None else torch.ones(B, T, dtype=torch.bool, device=h.device)
        if ring is None:
            out = window_attention(q, k, v, self.window, key_padding_mask=padding_mask, backend=self.attn_backend)
            return self.o_proj(out.reshape(B, T, -1)), None

        key_ring, value_ring, ring_valid = ring
        S = key_ring.shape[1]
        if seen > 0:
            # lay the ring out oldest-first, in front of the new tokens, then attend with the same window rule
            order = (torch.arange(S, device=h.device) + seen) % S
            held = min(seen, S)
            order = order[S - held:]
            k_all = torch.cat([key_ring[:, order], k], dim=1)
            v_all = torch.cat([value_ring[:, order], v], dim=1)
            valid_all = torch.cat([ring_valid[:, order], valid], dim=1)
            q_all = torch.cat([q.new_zeros(B, held, self.num_heads, self.head_dim), q], dim=1)
        else:
            held, k_all, v_all, valid_all, q_all = 0, k, v, valid, q
        out = window_attention(q_all, k_all, v_all, self.window, key_padding_mask=valid_all,
                               backend=self.attn_backend)[:, held:]
        # keep the newest S tokens, token n in slot n % S
        total = seen + T
        keep = min(S, held + T)
        new_k, new_v, new_valid = k_all[:, -keep:], v_all[:, -keep:], valid_all[:, -keep:]
        slots = torch.arange(total - keep, total, device=h.device) % S
        key_ring = key_ring.index_copy(1, slots, new_k.to(key_ring.dtype))
        value_ring = value_ring.index_copy(1, slots, new_v.to(value_ring.dtype))
        ring_valid = ring_valid.index_copy(1, slots, new_valid)
        return self.o_proj(out.reshape(B, T, -1)), (key_ring, value_ring, ring_valid)

    def _qkv_weight(self) -> torch.Tensor:
        """[W_q; W_k; W_v] as one matrix, so a decode token makes one small matmul instead of three; rebuilt only
        when a weight changes (the copy costs one more set of these weights while decoding)."""
        weights = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        key = tuple((w.data_ptr(), w._version) for w in weights)
        if self._qkv is None or self._qkv[0] != key:
            self._qkv = (key, torch.cat([w.detach() for w in weights]))
        return self._qkv[1]

    def inv_freq(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """RoPE frequencies for decode, made once per device (a plain attribute: model.to(bf16) must not round them)."""
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        key = (device, acc)
        if key not in self._inv_freq:
            self._inv_freq[key] = rope_inv_freq(self.rotary_dim, self.rope_theta, acc, device)
        return self._inv_freq[key]

    @torch.no_grad()
    def step(self, h: torch.Tensor, positions: torch.Tensor, key_ring: torch.Tensor, value_ring: torch.Tensor,
             ring_valid: torch.Tensor, slot: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """One decode token: h [B, d], positions [B] -> [B, d]. The ring (token n in slot n % S) is attended together
        with the current token, which is then written into `slot` ([] long, on the device) in place."""
        B, H, D = h.shape[0], self.num_heads, self.head_dim
        q, k, v = F.linear(h, self._qkv_weight()).split([H * D, D, H * D], dim=-1)
        q, k, v = q.view(B, H, D), k.view(B, 1, D), v.view(B, H, D)
        if valid is None:
            valid = torch.ones(B, dtype=torch.bool, device=h.device)
        out = decode_ops.window_step(q, k, v, self.inv_freq(h.device, h.dtype), positions, key_ring, value_ring,
                                     ring_valid, slot, valid, backend=self.decode_backend)
        return self.o_proj(out.reshape(B, -1))
