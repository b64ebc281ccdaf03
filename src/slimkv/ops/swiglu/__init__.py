"""SwiGLU on a fused [up | gate] projection output: y = SiLU(gate) * up.

legend: R rows (every leading dim flattened), f hidden width

    u = fc(x) [..., 2f]:  up = u[..., :f],  gate = u[..., f:]      (layers/ffn.py's layout)
    y = SiLU(gate) * up                                            [..., f], in u's dtype

Backends: "torch" (the spec, layers/ffn.py's two ops), "triton" (ops/swiglu/triton.py: one kernel each way, float32
inside, one rounding; the backward recomputes SiLU from u, so autograd keeps only u); "auto" = triton on CUDA, torch
elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rows import BACKENDS, pick_backend

GPU_MODULE = "slimkv.ops.swiglu.triton"


def swiglu_reference(u: torch.Tensor) -> torch.Tensor:
    """Spec (layers/ffn.py SwiGLU.forward after fc): first half up, second half gate."""
    up, gate = u.chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu(u: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """u [..., 2f] -> SiLU(u[..., f:]) * u[..., :f], [..., f] in u's dtype.

    Example:
        >>> y = ffn.down_proj(swiglu(ffn.fc(x)))
    """
    if u.shape[-1] % 2:
        raise ValueError(f"swiglu: the last dim must be 2f ([up | gate]); got {tuple(u.shape)}")
    if pick_backend("swiglu", backend, GPU_MODULE, u) == "torch":
        return swiglu_reference(u)
    from .triton import swiglu_triton

    return swiglu_triton(u)


__all__ = ["BACKENDS", "swiglu", "swiglu_reference"]
