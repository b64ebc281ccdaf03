"""RMSNorm and gated RMSNorm, computed in float32 (as the official Rodimus code does)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for low-precision tensors; float64 stays float64 (the specs are checked in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = upcast(x)
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * upcast(weight)).to(weight.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x * SiLU(z)) * w: the gate is applied BEFORE the norm (Rodimus `act_norm`)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return rms_norm(upcast(x) * F.silu(upcast(gate)), self.weight, self.eps)
