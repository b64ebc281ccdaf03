"""Hybrid decode cache of a RecurFormer model: KV only for the kept units, constant-size state for each branch.

legend: B batch, S slots seen so far (prompt + generated, padding included), Hk kept KV heads, D head dim

Per layer the cache holds a dict:
    "k", "v": [B, S, Hk, D]                      keys (RoPE applied) and values of the kept units; grows with S
    mamba2 / ddts branch: "conv_state", "ssm_state"      constant size
    window branch: "sink_k", "sink_v" [B, n_sinks, Hr, D], "sink_valid" [B, n_sinks],
                   "recent_k", "recent_v" [B, window + 1, Hr, D], "recent_valid", "recent_pos" [B, window + 1]
Shared across layers: "valid" [B, S] (True for real tokens) and "positions" [B, S] (token index within its sample).
"""
from __future__ import annotations

import torch

# bookkeeping tensors that are not part of the model's memory footprint (one bool/long per slot, shared)
_BOOKKEEPING = ("valid", "positions", "sink_valid", "recent_valid", "recent_pos")


class RecurFormerCache:
    """Passed as `past_key_values` to `RecurFormerForCausalLM.forward` and returned updated."""

    is_compileable = False

    def __init__(self, num_layers: int):
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def __len__(self) -> int:
        return len(self.layers)

    def nbytes(self) -> int:
        """Bytes of keys, values and recurrent/conv states over all layers (bookkeeping masks excluded)."""
        total = 0
        for layer in self.layers:
            for name, t in layer.items():
                if name not in _BOOKKEEPING:
                    total += t.numel() * t.element_size()
        return total

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        for layer in self.layers:
            for name in list(layer):
                layer[name] = layer[name].index_select(0, beam_idx)
        self.valid = self.valid.index_select(0, beam_idx)
        self.positions = self.positions.index_select(0, beam_idx)

