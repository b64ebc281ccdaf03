"""RMSNorm as ops: plain, residual add + norm, and gated; the torch spec beside fused Triton kernels.

legend: R rows (every leading dim flattened), C channels

    rms_norm(x, w):           y = x / sqrt(mean(x^2) + eps) * w
    add_rms_norm(x, r, w):    s = r + x (in r's dtype);  y = rms_norm(s, w);  returns (y, s)
    gated_rms_norm(x, z, w):  y = rms_norm(x * SiLU(z), w)        (gate BEFORE the norm, as layers/norm.py)
        with skip xs, D:      y = rms_norm((x + D * xs) * SiLU(z), w)  (the DDTS output o + D * x~, layers/ddts.py)

Math in float32 (float64 for float64 inputs, torch backend). y comes out in `out_dtype`, by default the weight's dtype
(what layers/norm.py returns); pass the next matmul's dtype (bf16 under autocast) to skip a cast. s keeps r's dtype, so
a float32 residual stream (residual_in_fp32) stays float32.

Backends: "torch" (the spec: plain autograd ops), "triton" (ops/norm/triton.py: one kernel forward, one backward that
recomputes the normalised rows from the inputs instead of saving them); "auto" = triton on CUDA, torch elsewhere.
The forward kernels take any rows, so a decode step ([B, C]) runs the same launch, with no host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rows import BACKENDS, pick_backend, upcast

GPU_MODULE = "slimkv.ops.norm.triton"


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Spec (layers/norm.py rms_norm): normalise in float32, scale by the weight, cast to out_dtype (weight's)."""
    x32 = upcast(x)
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * upcast(weight)).to(out_dtype or weight.dtype)


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                           out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec (models/modeling.py): the residual add in the residual's dtype, then the norm of the sum."""
    new_residual = residual + x.to(residual.dtype)
    return rms_norm_reference(new_residual, weight, eps, out_dtype), new_residual


def gated_rms_norm_reference(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
                             out_dtype: torch.dtype | None = None, skip: torch.Tensor | None = None,
                             skip_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Spec (layers/norm.py GatedRMSNorm): RMSNorm(x * SiLU(gate)) * weight, the product in float32; with a skip
    term, x + skip_scale * skip first (layers/ddts.py: o = upcast(o) + upcast(D) * upcast(x_conv))."""
    if skip is not None:
        x = upcast(x) + upcast(skip_scale) * upcast(skip)
    return rms_norm_reference(upcast(x) * F.silu(upcast(gate)), weight, eps, out_dtype)


def _check(op: str, x: torch.Tensor, weight: torch.Tensor, **others: torch.Tensor) -> None:
    if weight.dim() != 1 or x.shape[-1:] != weight.shape:
        raise ValueError(f"{op}: weight must be [C] with C = x's last dim; got {tuple(weight.shape)} for x "
                         f"{tuple(x.shape)}")
    for name, t in others.items():
        if t.shape != x.shape:
            raise ValueError(f"{op}: {name} must have x's shape {tuple(x.shape)}; got {tuple(t.shape)}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, out_dtype: torch.dtype | None = None,
             backend: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dim. x [..., C], weight [C] -> y [..., C] in out_dtype (default weight.dtype).

    Example:
        >>> y = rms_norm(h, norm.weight, 1e-5, out_dtype=torch.bfloat16)   # feeds a bf16 matmul directly
    """
    _check("rms_norm", x, weight)
    if pick_backend("rms_norm", backend, GPU_MODULE, x, weight) == "torch":
        return rms_norm_reference(x, weight, eps, out_dtype)
    from .triton import rms_norm_triton

    return rms_norm_triton(x, weight, eps, out_dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                 out_dtype: torch.dtype | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused with the next RMSNorm: returns (rms_norm(residual + x), residual + x).

    x, residual [..., C] (residual's dtype is the stream's: float32 with residual_in_fp32), weight [C].
    Example (one pre-norm block after another):
        >>> normed, h = add_rms_norm(block_out, h, next_norm.weight, 1e-5, out_dtype=torch.bfloat16)
    """
    _check("add_rms_norm", x, weight, residual=residual)
    if pick_backend("add_rms_norm", backend, GPU_MODULE, x, residual, weight) == "torch":
        return add_rms_norm_reference(x, residual, weight, eps, out_dtype)
    from .triton import add_rms_norm_triton

    return add_rms_norm_triton(x, residual, weight, eps, out_dtype)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                   out_dtype: torch.dtype | None = None, skip: torch.Tensor | None = None,
                   skip_scale: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """RMSNorm((x + skip_scale * skip) * SiLU(gate)) * weight (the DDTS output norm; the skip term is optional).

    x, gate, skip [..., C]; weight, skip_scale [C].
    Example (the whole DDTS output in one kernel, from the GLA output o and the conv output x~):
        >>> y = gated_rms_norm(o, z, out_norm.weight, eps, out_dtype=torch.bfloat16, skip=x_conv, skip_scale=D)
    """
    if (skip is None) != (skip_scale is None):
        raise ValueError("gated_rms_norm: pass skip and skip_scale together")
    extra = {} if skip is None else {"skip": skip}
    _check("gated_rms_norm", x, weight, gate=gate, **extra)
    if skip_scale is not None and skip_scale.shape != weight.shape:
        raise ValueError(f"gated_rms_norm: skip_scale must be [C] = {tuple(weight.shape)}; got "
                         f"{tuple(skip_scale.shape)}")
    if pick_backend("gated_rms_norm", backend, GPU_MODULE, x, gate, weight, skip, skip_scale) == "torch":
        return gated_rms_norm_reference(x, gate, weight, eps, out_dtype, skip, skip_scale)
    from .triton import gated_rms_norm_triton

    return gated_rms_norm_triton(x, gate, weight, eps, out_dtype, skip, skip_scale)


__all__ = ["BACKENDS", "rms_norm", "add_rms_norm", "gated_rms_norm", "rms_norm_reference", "add_rms_norm_reference",
           "gated_rms_norm_reference"]
