"""Windowed causal softmax attention with shared/grouped keys: training, prefill and ring-buffer decode.

legend: B batch, T time, H query heads, Hk key heads, Hv value heads, D key dim, Dv value dim, S cache slots

    query i sees key j  <=>  j <= i  and  (i - window <= j  or  j is one of the row's first `sinks` real keys)
                             (and key j is not padding)

`window` counts the PREVIOUS tokens a query sees, so it sees window + 1 keys in all (None = full causal). A decode
cache that reproduces this holds window + 1 slots (`window_cache_slots`). README.md says how SW-SKA's config
`window_size` maps onto it.

Backends: "reference" (dense [T, T] mask, the spec), "chunked" (pure PyTorch query blocks, memory
O(T * (chunk + window)); the CPU default), "flex" (FlexAttention block masks; compiled on CUDA), "sdpa" (PyTorch's
scaled_dot_product_attention, full causal only). `backend="auto"` picks, on CUDA, sdpa for window None and flex
otherwise (when it imports); chunked elsewhere (`pick_backend`).
"""
from __future__ import annotations

import torch

from ..dispatch import resolve_backend as _resolve

from .reference import window_attention_reference
from .sdpa import covers_sequence, window_attention_sdpa

BACKENDS = ("auto", "reference", "chunked", "flex", "sdpa")


def window_cache_slots(window: int) -> int:
    """Cache slots a ring buffer needs so decode sees exactly what `window_attention` sees: the window plus self."""
    return window + 1


def _check_heads(H: int, Hk: int, Hv: int, where: str) -> None:
    if H % Hk or H % Hv:
        raise ValueError(f"{where}: query heads ({H}) must be a multiple of key heads ({Hk}) and value heads ({Hv})")


def _check(q, k, v, window, key_padding_mask, sinks=0) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "window_attention: q, k, v must be [B, T, H, D], [B, T, Hk, D], [B, T, Hv, Dv]; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, D = q.shape
    if k.shape[:2] != (B, T) or k.shape[3] != D or v.shape[:2] != (B, T):
        raise ValueError(
            f"window_attention: k [B, T, Hk, D] and v [B, T, Hv, Dv] must match q {tuple(q.shape)}; "
            f"got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    _check_heads(H, k.shape[2], v.shape[2], "window_attention")
    if window is not None and (not isinstance(window, int) or window < 0):
        raise ValueError(f"window_attention: window must be a non-negative int or None; got {window!r}")
    if not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"window_attention: sinks must be a non-negative int; got {sinks!r}")
    if key_padding_mask is not None and (key_padding_mask.shape != (B, T) or key_padding_mask.dtype != torch.bool):
        raise ValueError(
            f"window_attention: key_padding_mask must be bool [B, T] = [{B}, {T}]; "
            f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )


def resolve_backend(backend: str, device: torch.device) -> str:
    return _resolve("window_attention", backend, BACKENDS, device, "flex", "torch.nn.attention.flex_attention")


def pick_backend(backend: str, device: torch.device, window: int | None, T: int) -> str:
    """The backend one call runs: `resolve_backend`, then, for "auto" on CUDA with no window (full causal: the
    kept heads of RecurFormer), sdpa instead of flex (one kernel for every length; ops/window_attn/sdpa.py says
    why). A window that happens to cover T (SW-SKA's training at seq <= window) stays on flex, whose training
    speed is the measured one (docs/training.md)."""
    resolved = resolve_backend(backend, device)
    if backend == "auto" and resolved == "flex" and window is None:
        return "sdpa"
    if resolved == "sdpa" and not covers_sequence(window, T):
        raise ValueError(f"window_attention: the sdpa backend is full causal only; window {window} does not cover "
                         f"{T} tokens (use flex, chunked or reference)")
    return resolved


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = 128,
    sinks: int = 0,
    bucket_lengths: bool = False,
) -> torch.Tensor:
    """Causal softmax attention over a sliding window, for a whole sequence (training and prefill).

    Args:
        q: [B, T, H, D].  k: [B, T, Hk, D].  v: [B, T, Hv, Dv].  H must be a multiple of Hk and of Hv;
            query head h reads key head h // (H // Hk) and value head h // (H // Hv).
            SW-SKA: Hk = 1, Hv = H.  GQA: Hk = Hv < H.  MHA: all equal.
        window: previous tokens each query sees (window + 1 keys with itself); None = full causal.
        scale: score scale, default D ** -0.5.
        key_padding_mask: [B, T] bool, True = real token. Padded keys get no weight; a query that sees no real
            key outputs zeros. Padded queries are computed like any other (the caller ignores them).
        backend: "auto" | "reference" | "chunked" | "flex" | "sdpa" (full causal only).
        chunk_size: query block of the chunked backend.
        sinks: attention sinks (StreamingLLM): each row's first `sinks` real keys stay visible to every later
            query beyond the window. Ignored when window is None (everything is visible anyway).
        bucket_lengths: flex only: calls without autograd run at a power-of-two length (flex.py), so evaluations of
            many lengths compile a few kernels instead of falling back to dense eager attention; the result is the
            same. For callers whose lengths vary (RecurFormer's window branches); off for SW-SKA, whose long
            prefills would pay for the padding.
    Returns:
        [B, T, H, Dv] in q's dtype; the softmax runs in float32 (float64 for float64 inputs).

    Example:
        >>> o = window_attention(q, k_shared, v, window=config_window_size // 2)
    """
    _check(q, k, v, window, key_padding_mask, sinks)
    backend = pick_backend(backend, q.device, window, q.shape[1])
    if backend == "sdpa":
        return window_attention_sdpa(q, k, v, scale, key_padding_mask)
    if backend == "reference":
        return window_attention_reference(q, k, v, window, scale, key_padding_mask, sinks)
    if backend == "flex":
        from .flex import window_attention_flex

        return window_attention_flex(q, k, v, window, scale, key_padding_mask, sinks=sinks,
                                     bucket=None if bucket_lengths else False)
    from .chunked import window_attention_chunked

    return window_attention_chunked(q, k, v, window, scale, key_padding_mask, chunk_size=chunk_size, sinks=sinks)


def window_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    valid: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """One query token per sequence against cached keys and values (decode).

    Args:
        q: [B, H, D], the current token's query (RoPE applied).
        k_cache: [B, S, Hk, D] (RoPE applied before caching), v_cache: [B, S, Hv, Dv].
        valid: [B, S] bool, True for slots that hold a token this query may see (the current token included).
    Returns:
        [B, H, Dv] in q's dtype; zeros for a sequence with no valid slot.

    Softmax does not care about slot order, so a ring buffer of `window_cache_slots(window)` slots, written at
    position % slots after RoPE, feeds this directly and reproduces `window_attention` row by row.
    """
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError(
            "window_decode: q, k_cache, v_cache must be [B, H, D], [B, S, Hk, D], [B, S, Hv, Dv]; "
            f"got {tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    B, H, D = q.shape
    S, Hk, Hv, Dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[2], v_cache.shape[3]
    if k_cache.shape[0] != B or k_cache.shape[3] != D or v_cache.shape[:2] != (B, S) or valid.shape != (B, S):
        raise ValueError(
            f"window_decode: caches and valid must agree with q {tuple(q.shape)}; got k_cache "
            f"{tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}, valid {tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise ValueError(f"window_decode: valid must be bool; got {valid.dtype}")
    _check_heads(H, Hk, Hv, "window_decode")
    scale = D**-0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    # [B, Hk, H/Hk, D] @ [B, Hk, D, S] -> [B, H, S]
    q_grouped = q.to(acc).view(B, Hk, H // Hk, D)
    scores = scale * (q_grouped @ k_cache.to(acc).permute(0, 2, 3, 1)).view(B, H, S)
    allowed = valid.view(B, 1, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    sees_nothing = ~allowed.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(sees_nothing, 0.0), dim=-1) * allowed
    # [B, Hv, H/Hv, S] @ [B, Hv, S, Dv] -> [B, H, Dv]
    out = probs.view(B, Hv, H // Hv, S) @ v_cache.to(acc).transpose(1, 2)
    return out.view(B, H, Dv).to(q.dtype)


__all__ = [
    "window_attention",
    "window_decode",
    "window_attention_reference",
    "window_cache_slots",
    "pick_backend",
    "resolve_backend",
    "BACKENDS",
]
