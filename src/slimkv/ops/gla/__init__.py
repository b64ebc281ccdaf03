"""Gated linear attention: one op, one spec, several backends.

legend: B batch, T time, H heads, K key dim, V value dim

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = scale * q_t S_t

Backends: "reference" (loop spec), "chunked" (pure PyTorch, chunkwise parallel; the CPU default),
"triton" (CUDA kernels, loaded lazily). `backend="auto"` picks triton on CUDA when available, chunked elsewhere.
`import slimkv` never imports triton.
"""
from __future__ import annotations

import torch

from ..dispatch import resolve_backend as _resolve

from .reference import gla_reference

BACKENDS = ("auto", "reference", "chunked", "triton")


def _check(q, k, v, log_decay, initial_state):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"gla: q and k must both be [B, T, H, K]; got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, _ = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"gla: v must be [B, T, H, V] matching q {tuple(q.shape)}; got {tuple(v.shape)}")
    if log_decay.shape not in (q.shape, (B, T, H)):
        raise ValueError(
            f"gla: log_decay must be [B, T, H, K] (per channel) or [B, T, H] (per head); got {tuple(log_decay.shape)}"
        )
    if initial_state is not None and initial_state.shape != (B, H, q.shape[-1], v.shape[-1]):
        raise ValueError(f"gla: initial_state must be [B, H, K, V]; got {tuple(initial_state.shape)}")


def resolve_backend(backend: str, device: torch.device) -> str:
    return _resolve("gla", backend, BACKENDS, device, "triton", "slimkv.ops.gla.triton")


def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention over a whole sequence.

    Args:
        q, k: [B, T, H, K].  v: [B, T, H, V].
        log_decay: [B, T, H, K] (per key channel: GLA, Rodimus/DDTS) or [B, T, H] (per head: Mamba2/SSD); <= 0.
        scale: query scale, default K ** -0.5.
        initial_state: [B, H, K, V] carried state, or None for zeros.
        output_final_state: also return the state after the last step ([B, H, K, V], float32 or float64).
        cu_seqlens: [N + 1] int32 cumulative lengths of N sequences packed along T (B = 1; initial_state and the
            final state are then [N, H, K, V]). Triton backend only.
        backend: "auto" (triton on CUDA when available, else chunked), "reference", "chunked" or "triton".
        chunk_size: tokens per chunk for the chunked backend; best as a multiple of 16 (see ops/gla/README.md).
    Returns:
        o [B, T, H, V] in q's dtype, and the final state or None.

    Example:
        >>> o, S = gla(q, k, v, -torch.rand(B, T, H, K), output_final_state=True)
        >>> o2, _ = gla(q2, k2, v2, g2, initial_state=S)   # continues the same sequence
    """
    if cu_seqlens is not None:
        # packed variable-length sequences (B == 1, state reset at each boundary): Triton only
        if resolve_backend(backend, q.device) != "triton":
            raise ValueError("gla: cu_seqlens (packed sequences) needs the triton backend on a CUDA device")
        from .triton import gla_triton

        return gla_triton(q, k, v, log_decay, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens)
    _check(q, k, v, log_decay, initial_state)
    backend = resolve_backend(backend, q.device)
    if backend == "reference":
        return gla_reference(q, k, v, log_decay, scale, initial_state, output_final_state)
    if backend == "chunked":
        from .chunked import gla_chunked

        return gla_chunked(q, k, v, log_decay, scale, initial_state, output_final_state, chunk_size=chunk_size)
    from .triton import gla_triton

    return gla_triton(q, k, v, log_decay, scale, initial_state, output_final_state)


def gla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. q, k: [B, H, K]; v: [B, H, V]; log_decay: [B, H, K] or [B, H]; state: [B, H, K, V].

    Returns (o [B, H, V], new_state). The update is the T = 1 case of `gla` and must match it exactly.
    """
    from .step import gla_step as _step

    return _step(q, k, v, log_decay, state, scale)


__all__ = ["gla", "gla_step", "gla_reference", "resolve_backend", "BACKENDS"]
