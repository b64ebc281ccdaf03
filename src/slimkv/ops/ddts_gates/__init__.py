"""The DDTS gate path as one op: from the gate projection's output and the raw keys to the GLA inputs.

legend: R rows (every leading dim flattened), m memory size (keys)

    [g^ | t^] = gt                      (the gate projection's float32 output, [..., 2m])
    g = softplus(g^),  tau = sigmoid(t^)
    log_decay = -tau * g                (the tempered decay, <= 0)
    k_gated   = k / max(||k||, eps) * g ** tau

exactly layers/ddts.py `_gates` after its two projections (docs/rodimus.md section 1). Math in float32
(float64 on the torch backend for float64 inputs); log_decay is float32, k_gated comes out in `out_dtype` (default
float32, what the layer produces; pass the GLA operand dtype to skip a cast).

Backends: "torch" (the spec, plain autograd ops) and "triton" (ops/ddts_gates/triton.py: one kernel each way; the
backward recomputes softplus, sigmoid, the power and the key norm from gt and k, so autograd keeps no [R, m] float32
intermediate). The kernel forms g ** tau as exp(tau * log g) with log g taken straight from g^ where softplus
underflows, so g -> 0 gives 0 (not NaN) forward and finite gradients backward.
"auto" = triton on CUDA, torch elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rows import BACKENDS, pick_backend, upcast

GPU_MODULE = "slimkv.ops.ddts_gates.triton"


def ddts_gates_reference(gt: torch.Tensor, k: torch.Tensor, eps: float = 1e-12,
                         out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec: layers/ddts.py `_gates` from the projections on. gt [..., 2m], k [..., m] -> (k_gated, log_decay)."""
    m = k.shape[-1]
    g_hat, t_hat = upcast(gt).split(m, dim=-1)
    g = F.softplus(g_hat)
    tau = torch.sigmoid(t_hat)
    log_decay = -tau * g
    input_gate = g.pow(tau)
    k = upcast(k)
    k_hat = k / k.norm(dim=-1, keepdim=True).clamp_min(eps)
    k_gated = k_hat * input_gate
    return (k_gated if out_dtype is None else k_gated.to(out_dtype)), log_decay


def ddts_gates(gt: torch.Tensor, k: torch.Tensor, eps: float = 1e-12, out_dtype: torch.dtype | None = None,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """DDTS gates. gt [..., 2m] = [g^ | t^] (float32), k [..., m] (any float dtype, may be a strided view).

    Returns (k_gated [..., m] in out_dtype (default float32), log_decay [..., m] float32).
    Example:
        >>> q, k = qk_proj(x_conv).split(m, dim=-1)
        >>> k_gated, log_decay = ddts_gates(F.linear(x_conv.float(), w, b), k, 1e-12, out_dtype=q.dtype)
    """
    m = k.shape[-1]
    if gt.shape[:-1] != k.shape[:-1] or gt.shape[-1] != 2 * m:
        raise ValueError(f"ddts_gates: gt must be [..., 2m] with k [..., m]; got gt {tuple(gt.shape)}, k "
                         f"{tuple(k.shape)}")
    if pick_backend("ddts_gates", backend, GPU_MODULE, gt, k) == "torch":
        return ddts_gates_reference(gt, k, eps, out_dtype)
    from .triton import ddts_gates_triton

    return ddts_gates_triton(gt, k, eps, out_dtype)


__all__ = ["BACKENDS", "ddts_gates", "ddts_gates_reference"]
