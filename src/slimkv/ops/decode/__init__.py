"""One-token decode steps, fused: short conv + SiLU, the DDTS projections and state step, the SW-SKA step
(norms: ops/norm).

Each function updates its state in place and keeps a fixed launch shape, so a whole decode step can be captured in a
CUDA graph (models/generation.py). `backend`: "auto" (Triton on CUDA when it imports, PyTorch elsewhere), "torch"
(the spec in reference.py) or "triton" (triton.py; also runs on CPU under TRITON_INTERPRET=1, which the tests use).
"""
from __future__ import annotations

import torch

from ..dispatch import gpu_path_available
from . import reference

BACKENDS = ("auto", "torch", "triton")
_TRITON = "slimkv.ops.decode.triton"


def use_triton(t: torch.Tensor, backend: str) -> bool:
    """Whether `backend` means the fused kernels for a tensor on t's device (resolution is cached per device type)."""
    if backend not in BACKENDS:
        raise ValueError(f"decode: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return t.dtype != torch.float64 and gpu_path_available(t.device, _TRITON)
    return backend == "triton"


def _kernels():
    from . import triton as kernels

    return kernels


def conv_silu_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor,
                   backend: str = "auto") -> torch.Tensor:
    """SiLU(causal depthwise conv) of one token; x [B, C], weight [C, K], state [B, C, K - 1] shifted in place."""
    if use_triton(x, backend):
        return _kernels().conv_silu_step(x, weight, bias, state)
    return reference.conv_silu_step(x, weight, bias, state)


def ddts_project(x_conv, x, qk_weight, gate_weight, gate_bias, hidden_weight, backend: str = "auto"):
    """[q | k] (model dtype), [g^ | t^] (float32) and the channel gate's hidden rows of one token; see
    reference.ddts_project. The fused kernel serves small batches; larger ones keep cuBLAS."""
    if use_triton(x, backend) and _kernels().ddts_project_supported(x, qk_weight, hidden_weight):
        return _kernels().ddts_project(x_conv, x, qk_weight, gate_weight, gate_bias, hidden_weight)
    return reference.ddts_project(x_conv, x, qk_weight, gate_weight, gate_bias, hidden_weight)


def ddts_step(q, k, gates, x, gate_hidden, up_weight, up_bias, x_conv, z, skip, state, scale: float,
              key_eps: float, backend: str = "auto") -> torch.Tensor:
    """The DDTS mixer between its projections for one token; see reference.ddts_step for the arguments."""
    if use_triton(x, backend):
        return _kernels().ddts_step(q, k, gates, x, gate_hidden, up_weight, up_bias, x_conv, z, skip, state, scale,
                                    key_eps)
    return reference.ddts_step(q, k, gates, x, gate_hidden, up_weight, up_bias, x_conv, z, skip, state, scale,
                               key_eps)


def window_step(q, k, v, inv_freq, positions, key_ring, value_ring, ring_valid, slot, valid,
                scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """One SW-SKA token: RoPE, attention over ring + itself, ring write; see reference.window_step."""
    if use_triton(q, backend) and _kernels().window_step_supported(q, inv_freq):
        return _kernels().window_step(q, k, v, inv_freq, positions, key_ring, value_ring, ring_valid, slot, valid,
                                      scale)
    return reference.window_step(q, k, v, inv_freq, positions, key_ring, value_ring, ring_valid, slot, valid, scale)


__all__ = ["BACKENDS", "conv_silu_step", "ddts_project", "ddts_step", "use_triton", "window_step"]
