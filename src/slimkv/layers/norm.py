"""RMSNorm and gated RMSNorm, computed in float32 (as the official Rodimus code does), through ops/norm.

`backend` picks the op's path ("auto": the fused Triton kernels on CUDA, the PyTorch spec elsewhere). Under autocast
the normalised rows come out directly in the autocast dtype, the dtype the next matmul would cast them to anyway.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.norm import add_rms_norm, gated_rms_norm, rms_norm
from ..ops.rows import upcast  # noqa: F401  (re-exported for the mixers)


def matmul_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast will run the next matmul in (None outside autocast)."""
    device = x.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, backend: str = "auto"):
        super().__init__()
        self.eps = eps
        self.backend = backend
        self.weight = nn.Parameter(torch.ones(dim))

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None, init=nn.init) -> None:
        init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, out_dtype=matmul_dtype(x), backend=self.backend)

    def add(self, x: torch.Tensor | None, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x) in one pass; the sum keeps the residual's dtype. x None: no add."""
        if x is None:
            return self(residual), residual
        return add_rms_norm(x, residual, self.weight, self.eps, out_dtype=matmul_dtype(residual),
                            backend=self.backend)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x * SiLU(z)) * w: the gate is applied BEFORE the norm (Rodimus `act_norm`)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor, skip: torch.Tensor | None = None,
                skip_scale: torch.Tensor | None = None) -> torch.Tensor:
        """RMSNorm((x + skip_scale * skip) * SiLU(gate)) * w; the skip term is optional (DDTS: D * x_conv)."""
        return gated_rms_norm(x, gate, self.weight, self.eps, out_dtype=matmul_dtype(x), skip=skip,
                              skip_scale=skip_scale, backend=self.backend)
