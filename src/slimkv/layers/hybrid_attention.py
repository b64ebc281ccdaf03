"""A pretrained attention layer whose KV units are split: some stay attention, the others go to one branch.

legend: B batch, T time, d model width, H query heads, U KV units, D head dim, S cache slots

Head-slot design (docs/recurformer.md): the kept units run RoPE attention with their pretrained q/k/v rows over
their own KV slots (a ring of S slots, layers/kv_ring.py: a static KV cache when S covers every token); the branch
(layers/branches.py) reads the same normed input and produces the replaced query heads, which go into their slots
before the pretrained o_proj. Parameter names follow Hugging Face's attention: q_proj / k_proj / v_proj hold the
kept rows, o_proj all columns, and the branch sits under `branch.`.

A unit is one KV group: a key/value head and the query heads that share it (GQA); replacing a single query head
would save no cache, so units are what gets replaced.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import decode as decode_ops
from ..ops.rope import apply_rope
from ..ops.window_attn import window_attention
from .branches import BranchGeometry, build_branch
from .kv_ring import ring_history, ring_write


@dataclass(frozen=True)
class AttentionGeometry:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def heads_per_unit(self) -> int:
        return self.num_heads // self.num_kv_heads

    def unit_of_head(self, head: int) -> int:
        return head // self.heads_per_unit

    def heads_of_unit(self, unit: int) -> list[int]:
        return list(range(unit * self.heads_per_unit, (unit + 1) * self.heads_per_unit))

    def heads_of_units(self, units: list[int]) -> list[int]:
        return [h for u in units for h in self.heads_of_unit(u)]


class HybridAttention(nn.Module):
    def __init__(self, geometry: AttentionGeometry, replaced_units: list[int], branch: str,
                 branch_options: dict | None = None, qkv_bias: bool = False, o_bias: bool = False,
                 window: int | None = None, attn_backend: str = "auto", decode_backend: str = "auto",
                 gla_backend: str = "auto"):
        """window: previous tokens each kept query sees (the source model's sliding window), None = all.
        The backends reach the ops of the kept heads and of the branch (layers/branches.py build_branch)."""
        super().__init__()
        geo = self.geo = geometry
        self.replaced_units = sorted(replaced_units)
        self.kept_units = [u for u in range(geo.num_kv_heads) if u not in self.replaced_units]
        self.kept_heads = geo.heads_of_units(self.kept_units)
        self.replaced_heads = geo.heads_of_units(self.replaced_units)
        self.window, self.attn_backend, self.decode_backend = window, attn_backend, decode_backend
        order = self.kept_heads + self.replaced_heads
        # position of each original head in [kept | replaced]; a list, device copies made on use (_slot_index)
        self.slot_order = [order.index(h) for h in range(geo.num_heads)]
        self._slot_index: dict[torch.device, torch.Tensor] = {}
        d, D, K = geo.hidden_size, geo.head_dim, len(self.kept_units)
        if K:
            self.q_proj = nn.Linear(d, K * geo.heads_per_unit * D, bias=qkv_bias)
            self.k_proj = nn.Linear(d, K * D, bias=qkv_bias)
            self.v_proj = nn.Linear(d, K * D, bias=qkv_bias)
        self.o_proj = nn.Linear(geo.num_heads * D, d, bias=o_bias)
        self.branch = None
        if self.replaced_units:
            shape = BranchGeometry(d, D, len(self.replaced_heads), len(self.replaced_units), qkv_bias, window)
            self.branch = build_branch(branch, shape, branch_options, dict(
                attn_backend=attn_backend, decode_backend=decode_backend, gla_backend=gla_backend))

    def kv_slots(self, capacity: int) -> int:
        """Slots of the kept units' cache: every token (`capacity`), or the source's window when it has one."""
        return capacity if self.window is None else max(min(capacity, self.window), 1)

    def state_shapes(self, batch_size: int, capacity: int) -> dict[str, tuple[int, ...]]:
        shapes = {}
        if self.kept_units:
            S, K, D = self.kv_slots(capacity), len(self.kept_units), self.geo.head_dim
            shapes.update(key_ring=(batch_size, S, K, D), value_ring=(batch_size, S, K, D), ring_valid=(batch_size, S))
        if self.branch is not None:
            shapes.update(self.branch.state_shapes(batch_size))
        return shapes

    def _merge(self, parts: list[torch.Tensor], head_dim: int) -> torch.Tensor:
        """[kept | replaced] heads back in the original head order (along `head_dim`)."""
        heads = torch.cat(parts, dim=head_dim) if len(parts) > 1 else parts[0]
        if len(parts) == 1:
            return heads  # all kept or all replaced: already in order
        index = self._slot_index.get(heads.device)
        if index is None:
            index = self._slot_index[heads.device] = torch.tensor(self.slot_order, device=heads.device)
        return heads.index_select(head_dim, index)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
                padding_mask: torch.Tensor | None = None, state: dict[str, torch.Tensor] | None = None,
                seen: int = 0) -> torch.Tensor:
        """h [B, T, d] normed input; rope (cos, sin) [B, T, D]; positions [B, T]; padding_mask [B, T] (True = real)
        or None. With `state` (this layer's cache entry, `seen` tokens in it) the new tokens continue the cache and
        are written into it. Returns [B, T, d]."""
        B, T, _ = h.shape
        D = self.geo.head_dim
        parts = []
        if self.kept_units:
            cos, sin = rope
            q = apply_rope(self.q_proj(h).unflatten(-1, (-1, D)), cos, sin)
            k = apply_rope(self.k_proj(h).unflatten(-1, (-1, D)), cos, sin)
            v = self.v_proj(h).unflatten(-1, (-1, D))
            if state is None:
                parts.append(window_attention(q, k, v, self.window, key_padding_mask=padding_mask,
                                              backend=self.attn_backend))
            else:
                parts.append(self._attend_cached(q, k, v, padding_mask, state, seen))
        if self.branch is not None:
            parts.append(self.branch(h, rope, positions, padding_mask, state, seen))
        return self.o_proj(self._merge(parts, 2).flatten(2))

    def _attend_cached(self, q, k, v, padding_mask, state, seen: int) -> torch.Tensor:
        B, T = q.shape[:2]
        S = state["key_ring"].shape[1]
        if self.window is None and seen + T > S:
            raise ValueError(f"the cache holds {S} tokens per row; {seen} are in it and {T} more do not fit "
                             "(allocate it with a larger capacity)")
        valid = padding_mask if padding_mask is not None else torch.ones(B, T, dtype=torch.bool, device=q.device)
        old_k, old_v, old_valid = ring_history(state["key_ring"], state["value_ring"], state["ring_valid"], seen)
        held = old_k.shape[1]
        # earlier tokens go in front as keys only (their query rows are zeros and dropped)
        out = window_attention(torch.cat([q.new_zeros(B, held, *q.shape[2:]), q], 1), torch.cat([old_k, k], 1),
                               torch.cat([old_v, v], 1), self.window,
                               key_padding_mask=torch.cat([old_valid, valid], 1), backend=self.attn_backend)
        ring_write(state["key_ring"], state["value_ring"], state["ring_valid"], k, v, valid, seen)
        return out[:, held:]

    @torch.no_grad()
    def step(self, h: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, state: dict[str, torch.Tensor],
             seen: torch.Tensor) -> torch.Tensor:
        """One decode token per row: h [B, d], positions [B] -> [B, d]; the cache entry is updated in place.
        `seen` ([] long, on the device) counts the tokens already in the cache."""
        B, D = h.shape[0], self.geo.head_dim
        parts = []
        if self.kept_units:
            q = F.linear(h, self.q_proj.weight, self.q_proj.bias).view(B, -1, D)
            k = F.linear(h, self.k_proj.weight, self.k_proj.bias).view(B, -1, D)
            v = F.linear(h, self.v_proj.weight, self.v_proj.bias).view(B, -1, D)
            ring = state["key_ring"]
            real = torch.ones(B, dtype=torch.bool, device=h.device)
            parts.append(decode_ops.window_step(q, k, v, inv_freq, positions, ring, state["value_ring"],
                                                state["ring_valid"], torch.remainder(seen, ring.shape[1]), real,
                                                backend=self.decode_backend))
        if self.branch is not None:
            parts.append(self.branch.step(h, positions, inv_freq, state, seen))
        return self.o_proj(self._merge(parts, 1).flatten(1))
