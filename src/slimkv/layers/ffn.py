"""SwiGLU feed-forward with a fused [up | gate] input projection (the official Rodimus+ layout)."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.swiglu import swiglu


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, backend: str = "auto"):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.backend = backend
        # rows 0:f = up, f:2f = gate; one matmul for both
        self.fc = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.down_proj._is_residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.fc(x), backend=self.backend))
