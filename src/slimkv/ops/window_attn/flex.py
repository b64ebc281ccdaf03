"""Windowed causal attention with FlexAttention block masks: the GPU backend.

legend: B batch, T time, H query heads, Hk key heads, Hv value heads, D key dim, Dv value dim

The mask (causal, at most `window` previous keys, padded keys off) is a FlexAttention mask_mod; the block mask built
from it lets the fused kernel skip every key block outside the window, so time and memory grow as T * window.
On CUDA the compiled kernel runs; elsewhere flex_attention runs eagerly (dense scores, fine for tests only).
FlexAttention needs key and value to have the same number of heads, so SW-SKA's single shared key (Hk = 1) is
broadcast to the value heads as a stride-0 view, never copied.

Lengths: torch.compile specialises the fused kernel per sequence length, and after its recompile limit runs
flex_attention eagerly on dense scores. With `bucket`, calls without autograd (evaluations: perplexity windows,
passkey prompts, prefills of every length) are padded at the end to a power of two (`bucket_length`): appended keys
lie after every real query, so the causal mask hides them, and the appended queries are dropped. One evaluation then
compiles a handful of lengths. Training keeps its exact length (one length per run, and no padded backward).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .reference import key_ranks


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _window_mask_mod(window: int | None, key_padding_mask: torch.Tensor | None, sink_mask: torch.Tensor | None = None):
    """sink_mask [B', T] bool: keys seen by every later query (each row's first real keys), or None."""
    def mask_mod(batch, head, query_idx, key_idx):
        allowed = key_idx <= query_idx
        if window is not None:
            in_window = query_idx - key_idx <= window
            if sink_mask is not None:
                in_window = in_window | sink_mask[batch if sink_mask.shape[0] > 1 else 0, key_idx]
            allowed = allowed & in_window
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[batch, key_idx]
        return allowed

    return mask_mod


@functools.lru_cache(maxsize=32)
def _unpadded_block_mask(T: int, window: int | None, device: torch.device, sinks: int = 0):
    from torch.nn.attention.flex_attention import create_block_mask

    sink_mask = (torch.arange(T, device=device) < sinks).unsqueeze(0) if sinks and window is not None else None
    # compiled mask building never materialises the dense [T, T] mask; worth it on CUDA only
    return create_block_mask(
        _window_mask_mod(window, None, sink_mask), None, None, T, T, device=device, _compile=device.type == "cuda"
    )


def window_block_mask(T: int, window: int | None, key_padding_mask: torch.Tensor | None, device: torch.device,
                      sinks: int = 0):
    """The FlexAttention BlockMask of `window_attention`; cached per (T, window, device, sinks) without padding."""
    if key_padding_mask is None:
        return _unpadded_block_mask(T, window, torch.device(device), sinks)
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device(device)
    B = key_padding_mask.shape[0]
    sink_mask = key_ranks(T, key_padding_mask, device) < sinks if sinks and window is not None else None
    mask_mod = _window_mask_mod(window, key_padding_mask, sink_mask)
    return create_block_mask(mask_mod, B, None, T, T, device=device, _compile=device.type == "cuda")


# the fused kernel's block size: shorter sequences share one compiled length
_MIN_BUCKET = 128


def bucket_length(T: int) -> int:
    """The length a no-grad call runs at: the next power of two, at least one block (128)."""
    return max(_MIN_BUCKET, 1 << max(0, T - 1).bit_length())


def _match_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, Hx, T, E] -> [B, num_heads, T, E], head hx serving num_heads // Hx consecutive heads."""
    B, Hx, T, E = x.shape
    if Hx == num_heads:
        return x
    if Hx == 1:
        return x.expand(B, num_heads, T, E)
    return x.repeat_interleave(num_heads // Hx, dim=1)


def window_attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    compiled: bool | None = None,
    sinks: int = 0,
    bucket: bool | None = False,
) -> torch.Tensor:
    """q [B, T, H, D], k [B, T, Hk, D], v [B, T, Hv, Dv], key_padding_mask [B, T] (True = real) -> [B, T, H, Dv].

    compiled: run the fused kernel through torch.compile; default True on CUDA, False elsewhere.
    bucket: pad T to `bucket_length(T)` and drop the appended rows (module docstring); None: when compiled and
    autograd is off; default False (window_attention's bucket_lengths turns it on).
    """
    from torch.nn.attention.flex_attention import flex_attention

    B, T, H, D = q.shape
    Hk, Hv = k.shape[2], v.shape[2]
    scale = D**-0.5 if scale is None else scale
    if compiled is None:
        compiled = q.is_cuda
    if bucket is None:
        bucket = compiled and not torch.is_grad_enabled()
    padded_length = bucket_length(T) if bucket else T
    if padded_length != T:
        extra = padded_length - T
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, extra)) for x in (q, k, v))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, extra), value=False)
        return window_attention_flex(q, k, v, window, scale, key_padding_mask, compiled, sinks, bucket=False)[:, :T]
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("window_attention: the flex backend has no backward off CUDA; use backend='chunked'")
    # flex wants key and value with one head count dividing H: the larger of the two when it divides the other
    if Hk == Hv:
        kv_heads = Hk
    elif max(Hk, Hv) % min(Hk, Hv) == 0:
        kv_heads = max(Hk, Hv)
    else:
        kv_heads = H
    # [B, H, T, D], [B, kv_heads, T, D], [B, kv_heads, T, Dv]
    q_heads = q.transpose(1, 2)
    k_heads = _match_heads(k.transpose(1, 2), kv_heads)
    v_heads = _match_heads(v.transpose(1, 2), kv_heads)
    block_mask = window_block_mask(T, window, key_padding_mask, q.device, sinks)
    attend = _compiled_flex_attention() if compiled else flex_attention
    out = attend(q_heads, k_heads, v_heads, block_mask=block_mask, scale=scale, enable_gqa=kv_heads != H)
    return out.transpose(1, 2)
