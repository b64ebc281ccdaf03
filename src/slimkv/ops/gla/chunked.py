"""Gated linear attention in chunks: the CPU/default backend. Pure PyTorch, float64-capable, autograd as is.

legend: B batch, T time, H heads, K key dim, V value dim, N chunks, C chunk, S sub-chunks per chunk, c sub-chunk

Within a chunk, b = cumsum(g) (inclusive, restarted at each chunk). With the state S0 entering the chunk:

    o_i   = scale * [ (q_i * exp(b_i)) S0  +  sum_{j <= i} (q_i . (k_j * exp(b_i - b_j))) v_j ]
    S_end = exp(b_last) * S0  +  sum_j (k_j * exp(b_last - b_j))^T v_j

Every exponent above is <= 0, so nothing can overflow. The intra-chunk pairs use a reference point r between j and i
(the end of the sub-chunk before i's), so exp(b_i - b_j) = exp(b_i - r) * exp(r - b_j) with both factors <= 1; pairs
inside one sub-chunk use a masked [c, c, K] tensor of exact differences. Memory is O(T * C * K / c), never T x T.
With one log-decay per head the decay is a [C, C] matrix and the intra-chunk part is plain matmuls.
See README.md in this folder for the derivation.
"""
from __future__ import annotations

import torch

from . import _check

SUB_CHUNK = 16


def gla_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel gated linear attention; same contract as `slimkv.ops.gla.gla`.

    Args:
        q, k: [B, T, H, K].  v: [B, T, H, V].
        log_decay: [B, T, H, K] (per key channel) or [B, T, H] (per head); <= 0.
        scale: query scale, default K ** -0.5.
        initial_state: [B, H, K, V] or None for zeros.
        output_final_state: also return the state after the last token.
        chunk_size: tokens per chunk (memory grows with it linearly, work with it for the intra-chunk part).
    Returns:
        o [B, T, H, V] in q's dtype; final state [B, H, K, V] (float32, float64 for float64 q) or None.

    Example:
        >>> o, S = gla_chunked(q, k, v, -torch.rand(B, T, H, K), output_final_state=True, chunk_size=64)
    """
    _check(q, k, v, log_decay, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"gla: chunk_size must be a positive int; got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    # sums of T decayed outer products: float32 at least, float64 when the caller works in float64
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    per_head = log_decay.dim() == 3

    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    # [B, H, T, *]; padded tokens have k = v = 0 and g = 0, so they leave the state untouched
    q_h, k_h, v_h, g_h = (x.transpose(1, 2).to(acc) for x in (q, k, v, log_decay))
    if pad:
        q_h, k_h, v_h = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q_h, k_h, v_h))
        g_h = torch.nn.functional.pad(g_h, (0, pad) if per_head else (0, 0, 0, pad))
    # [B, H, N, C, K] / [B, H, N, C, V]
    q_c = (q_h * scale).reshape(B, H, N, C, K)
    k_c = k_h.reshape(B, H, N, C, K)
    v_c = v_h.reshape(B, H, N, C, V)
    # b: within-chunk inclusive cumulative log-decay, [B, H, N, C, K] or [B, H, N, C]
    b = (g_h.reshape(B, H, N, C) if per_head else g_h.reshape(B, H, N, C, K)).cumsum(dim=3)

    if per_head:
        # [B, H, N, C, 1]
        b = b.unsqueeze(-1)
        b_last = b[:, :, :, -1:]
        o_intra = _intra_per_head(q_c, k_c, v_c, b.squeeze(-1))
    else:
        b_last = b[:, :, :, -1:]
        o_intra = _intra_per_channel(q_c, k_c, v_c, b)

    # [B, H, N, K, V]: what each chunk adds to the state, already decayed to the chunk's end
    chunk_updates = (k_c * (b_last - b).exp()).transpose(-1, -2) @ v_c
    # [B, H, N, K, 1]: decay of the whole chunk; broadcasts over V (and over K when per head)
    chunk_decays = b_last.transpose(-1, -2).exp()
    state = q_c.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    # state entering each chunk: a short sequential scan over N chunks of [K, V] updates
    entering = []
    for n in range(N):
        entering.append(state)
        state = state * chunk_decays[:, :, n] + chunk_updates[:, :, n]
    # [B, H, N, C, V]
    o_inter = (q_c * b.exp()) @ torch.stack(entering, dim=2)

    o = (o_inter + o_intra).reshape(B, H, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(q.dtype), (state if output_final_state else None)


def _causal_mask(C: int, device: torch.device) -> torch.Tensor:
    """[C, C] bool, True where key j may feed query i (j <= i)."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril()


def _intra_per_head(q_c, k_c, v_c, b):
    """Intra-chunk output with one log-decay per head. q_c, k_c [B,H,N,C,K], v_c [B,H,N,C,V], b [B,H,N,C]."""
    C = b.shape[-1]
    mask = _causal_mask(C, b.device)
    # [B, H, N, C, C]: exp(b_i - b_j); above the diagonal the exponent is positive, so clamp it before masking
    decay = (b.unsqueeze(-1) - b.unsqueeze(-2)).clamp_max(0).exp() * mask
    return ((q_c @ k_c.transpose(-1, -2)) * decay) @ v_c


def _intra_per_channel(q_c, k_c, v_c, b):
    """Intra-chunk output with a log-decay per key channel. q_c, k_c, b [B,H,N,C,K], v_c [B,H,N,C,V]."""
    B, H, N, C, K = q_c.shape
    V = v_c.shape[-1]
    c = SUB_CHUNK if C % SUB_CHUNK == 0 and C > SUB_CHUNK else C
    S = C // c
    q_s = q_c.reshape(B, H, N, S, c, K)
    k_s = k_c.reshape(B, H, N, S, c, K)
    v_s = v_c.reshape(B, H, N, S, c, V)
    b_s = b.reshape(B, H, N, S, c, K)

    # pairs inside one sub-chunk: [B, H, N, S, c, c, K] of exact differences b_i - b_j, masked to j <= i
    mask = _causal_mask(c, b.device)
    diff = (b_s.unsqueeze(-2) - b_s.unsqueeze(-3)).clamp_max(0)
    decay = diff.exp() * mask.unsqueeze(-1)
    scores = (q_s.unsqueeze(-2) * decay * k_s.unsqueeze(-3)).sum(-1)
    o = scores @ v_s
    if S == 1:
        return o.reshape(B, H, N, C, V)

    # pairs across sub-chunks: reference r = b at the last token before sub-chunk s (row block), [B, H, N, S, 1, K]
    ref = torch.cat([b_s[:, :, :, :1, :1], b_s[:, :, :, :-1, -1:]], dim=3)
    # rows (i in sub-chunk s): exp(b_i - r) <= 1 because i comes after r
    q_ref = q_s * (b_s - ref).exp()
    # columns (all j of the chunk, per row block): exp(r - b_j) <= 1 for the j before r, which are the only ones kept;
    # the clamp keeps the discarded ones finite. [B, H, N, S, C, K]
    k_ref = k_c.unsqueeze(3) * (ref - b.unsqueeze(3)).clamp_max(0).exp()
    # [S, C]: key j is in an earlier sub-chunk than row block s
    earlier = torch.arange(C, device=b.device).unsqueeze(0) < (torch.arange(S, device=b.device) * c).unsqueeze(1)
    # [B, H, N, S, c, C]
    scores = (q_ref @ k_ref.transpose(-1, -2)) * earlier.unsqueeze(-2)
    o = o + scores @ v_c.unsqueeze(3)
    return o.reshape(B, H, N, C, V)
