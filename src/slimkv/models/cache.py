"""Inference cache of Rodimus / Rodimus+: constant-size recurrent state plus a bounded ring buffer per layer.

Per layer: conv_state [B, e, k-1], ssm_state [B, 1, m, e] (float32); Rodimus+ adds key_ring [B, S, 1, D],
value_ring [B, S, H, D] and ring_valid [B, S] with S = W // 2 slots. Nothing here grows with the number of tokens.
"""
from __future__ import annotations

import torch


class RodimusCache:
    """Preallocated state for every layer; `seen_tokens` counts tokens already consumed (padding included)."""

    is_compileable = False

    def __init__(self, layer_shapes: list[dict[str, tuple[int, ...]]], dtype: torch.dtype, device: torch.device):
        self.layers: list[dict[str, torch.Tensor]] = []
        for shapes in layer_shapes:
            entry = {}
            for name, shape in shapes.items():
                if name == "ring_valid":
                    entry[name] = torch.zeros(shape, dtype=torch.bool, device=device)
                elif name == "ssm_state":
                    # the state sums many decayed outer products: keep it float32 (float64 stays float64)
                    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
                    entry[name] = torch.zeros(shape, dtype=state_dtype, device=device)
                else:
                    entry[name] = torch.zeros(shape, dtype=dtype, device=device)
            self.layers.append(entry)
        self.seen_tokens = 0

    def update(self, layer_idx: int, **tensors: torch.Tensor) -> None:
        """Write new state into the preallocated buffers (in place: the byte count never changes)."""
        entry = self.layers[layer_idx]
        for name, value in tensors.items():
            entry[name].copy_(value)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self.layers for t in entry.values())

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for entry in self.layers:
            for name, t in entry.items():
                entry[name] = t.index_select(0, beam_idx.to(t.device))

    def __len__(self) -> int:
        return len(self.layers)
