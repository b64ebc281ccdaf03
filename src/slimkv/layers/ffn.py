"""SwiGLU feed-forward with a fused [up | gate] input projection (the official Rodimus+ layout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        # rows 0:f = up, f:2f = gate; one matmul for both
        self.fc = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.down_proj._is_residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.fc(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
