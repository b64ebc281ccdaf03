"""Full causal attention through PyTorch's scaled_dot_product_attention: the window backend for windows that
cover the whole sequence (window None, or window >= T - 1), such as RecurFormer's kept heads.

legend: B batch, T time, H query heads, Hk key heads, Hv value heads, D key dim, Dv value dim

On CUDA, SDPA runs the flash kernel (bf16 / fp16, no mask) or the memory-efficient one (float32, or a padding mask),
one kernel for every sequence length. The flex backend compiles per block mask; in an H200 evaluation of many
lengths (perplexity windows, passkey prompts, a prefill of 8,000 tokens) its recompiles hit torch.compile's limit
and it ran eagerly on dense scores (the warnings: docs/recurformer/gpu_smollm2_2026-12-03/parts/mamba2/
experiment.log). That evaluation's held-out perplexity took 31 s for the converted SmolLM2 against 1.6 s for the
plain model (results.json there, ppl_seconds; how much of it flex was is not measured).

Key and value heads are expanded to the query heads before the call (a copy of K and V, small beside the scores),
because SDPA's grouped-query option is not served by its float32 kernel; autograd sums their gradients back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import expand_heads


def covers_sequence(window: int | None, T: int) -> bool:
    """True when a window of `window` previous tokens lets every query see its whole prefix (full causal)."""
    return window is None or window >= T - 1


def window_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, T, H, D], k [B, T, Hk, D], v [B, T, Hv, Dv], key_padding_mask [B, T] (True = real) -> [B, T, H, Dv],
    full causal; a query that sees no real key outputs zeros."""
    B, T, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    # [B, H, T, D]
    q_heads, k_heads, v_heads = (x.transpose(1, 2) for x in (q, expand_heads(k, H), expand_heads(v, H)))
    if key_padding_mask is None:
        out = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, is_causal=True, scale=scale)
        return out.transpose(1, 2)
    # a query before its row's first real key sees nothing: let it see every key (finite softmax), then zero it
    sees_some = (key_padding_mask.cumsum(-1) > 0).view(B, 1, T, 1)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    allowed = (causal & key_padding_mask.view(B, 1, 1, T)) | ~sees_some
    out = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, attn_mask=allowed, scale=scale)
    return out.masked_fill(~sees_some, 0.0).transpose(1, 2)
