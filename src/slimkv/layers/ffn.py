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

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None, init=nn.init) -> None:
        """normal(std) in, normal(residual_std) out (the model picks the residual scale)."""
        init.normal_(self.fc.weight, mean=0.0, std=std)
        init.normal_(self.down_proj.weight, mean=0.0, std=std if residual_std is None else residual_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.fc(x), backend=self.backend))
