"""Inference cache of Rodimus / Rodimus+: constant-size recurrent state plus a bounded ring buffer per layer.

Per layer: conv_state [B, e, k-1], ssm_state [B, 1, m, e] (float32, whatever the model dtype); Rodimus+ adds
key_ring [B, S, 1, D], value_ring [B, S, H, D] and ring_valid [B, S] with S = W // 2 slots. Nothing here grows with
the number of tokens, and nothing is ever reallocated: every update writes into the same tensors, which is what lets
a CUDA graph replay the decode step (models/generation.py).

Counters: `seen_tokens` (host int) counts tokens consumed, padding included; `seen` is the same count on the device
(the ring slot of the next token is seen % S, read inside the graph) and `next_position` [B] holds each row's next
RoPE position (real tokens so far: left padding does not count).
"""
from __future__ import annotations

import torch

# state tensors whose dtype is not the model's (branch_valid: RecurFormer's streaming heads, layers/branch_window.py)
_STATE_DTYPES = {"ring_valid": "bool", "branch_valid": "bool", "ssm_state": "state"}


def state_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The recurrent state sums many decayed outer products: float32 in a bf16/fp16 model (float64 stays float64)."""
    kind = _STATE_DTYPES.get(name)
    if kind == "bool":
        return torch.bool
    if kind == "state":
        return torch.float64 if model_dtype == torch.float64 else torch.float32
    return model_dtype


class RodimusCache:
    """Preallocated state for every layer, passed to the model as `cache` / `past_key_values`."""

    is_compileable = False

    def __init__(self, layer_shapes: list[dict[str, tuple[int, ...]]], dtype: torch.dtype, device: torch.device,
                 batch_size: int | None = None):
        self.layers: list[dict[str, torch.Tensor]] = [
            {name: torch.zeros(shape, dtype=state_dtype(name, dtype), device=device) for name, shape in shapes.items()}
            for shapes in layer_shapes
        ]
        if batch_size is None:
            batch_size = next(iter(self.layers[0].values())).shape[0] if self.layers and self.layers[0] else 1
        self.dtype = dtype
        self.seen_tokens = 0
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.next_position.shape[0]

    def update(self, layer_idx: int, **tensors: torch.Tensor) -> None:
        """Write new state into the preallocated buffers (in place: the byte count never changes)."""
        entry = self.layers[layer_idx]
        for name, value in tensors.items():
            entry[name].copy_(value)

    def advance(self, num_tokens: int, next_position: torch.Tensor) -> None:
        """Record that `num_tokens` more tokens were consumed; `next_position` [B] is each row's next RoPE position."""
        self.seen_tokens += num_tokens
        self.seen.add_(num_tokens)
        self.next_position.copy_(next_position)

    def reset(self) -> None:
        """Back to the empty state, in place (the buffers a captured graph points at stay valid)."""
        for entry in self.layers:
            for t in entry.values():
                t.zero_()
        self.seen_tokens = 0
        self.seen.zero_()
        self.next_position.zero_()

    def rows(self, count: int) -> "RodimusCache":
        """A cache over the first `count` rows that shares this one's storage (writes go through)."""
        view = RodimusCache.__new__(RodimusCache)
        view.layers = [{name: t[:count] for name, t in entry.items()} for entry in self.layers]
        view.dtype, view.seen_tokens, view.seen = self.dtype, self.seen_tokens, self.seen
        view.next_position = self.next_position[:count]
        return view

    def copy_from(self, other: "RodimusCache") -> None:
        """Load `other`'s state into the first rows of this cache (same layers, at most as many rows)."""
        rows = self.rows(other.batch_size)
        for mine, theirs in zip(rows.layers, other.layers):
            for name, t in theirs.items():
                mine[name].copy_(t)
        self.seen_tokens = other.seen_tokens
        self.seen.copy_(other.seen)
        rows.next_position.copy_(other.next_position)

    def clone(self, rows: int | None = None) -> "RodimusCache":
        """An independent copy (of the first `rows` rows)."""
        src = self.rows(rows) if rows is not None else self
        copy = RodimusCache.__new__(RodimusCache)
        copy.layers = [{name: t.clone() for name, t in entry.items()} for entry in src.layers]
        copy.dtype, copy.seen_tokens = self.dtype, self.seen_tokens
        copy.seen, copy.next_position = src.seen.clone(), src.next_position.clone()
        return copy

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self.layers for t in entry.values())

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for entry in self.layers:
            for name, t in entry.items():
                t.copy_(t.index_select(0, beam_idx.to(t.device)))
        self.next_position.copy_(self.next_position.index_select(0, beam_idx.to(self.next_position.device)))

    def __len__(self) -> int:
        return len(self.layers)
