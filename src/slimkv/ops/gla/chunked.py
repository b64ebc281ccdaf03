"""Gated linear attention in chunks: the CPU/default backend. Pure PyTorch, float64-capable, autograd as is.

legend: B batch, T time, H heads, K key dim, V value dim, N chunks, C chunk, S sub-chunks per chunk, c sub-chunk

Within a chunk, b = cumsum(g) (inclusive, restarted at each chunk). With the state S0 entering the chunk:

    o_i   = scale * [ (q_i * exp(b_i)) S0  +  sum_{j <= i} (q_i . (k_j * exp(b_i - b_j))) v_j ]
    S_end = exp(b_last) * S0  +  sum_j (k_j * exp(b_last - b_j))^T v_j

Every exponent above is <= 0, so nothing can overflow. Intra-chunk pairs (j <= i) never form an unbounded
exp(+b): pairs inside one sub-chunk of c tokens are one matmul over the channels that decay by at most
FACTOR_LIMIT nats there (factors within e^+-20), plus masked [c, c] exact differences for the others; pairs across
sub-chunks factor through reference points between them, exp(b_i - r) * exp(r - end) * exp(end - b_j), each <= 1.
The prefix sums b are kept in float64 so their differences stay exact even after thousands of nats of decay.
Memory is O(T * K * C / c) (plus O(T * c) per strong-decay channel), never T x T.
With one log-decay per head the decay is a [C, C] matrix and the intra-chunk part is plain matmuls.
See README.md in this folder for the derivation.
"""
from __future__ import annotations

import torch

from . import _check

SUB_CHUNK = 16
# a sub-chunk whose decay stays within this many nats factors exp(l_i - l_j) = exp(l_i) * exp(-l_j) (a matmul):
# both factors lie in [e^-20, e^20], far from float32 overflow and underflow; stronger decays take the exact path
FACTOR_LIMIT = 20.0


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
    if T == 0:
        state = q.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
        return q.new_zeros(B, 0, H, V), (state if output_final_state else None)

    # chunks of sub-chunk multiples where possible; a short sequence becomes one padded chunk
    C = min(chunk_size, -(-T // SUB_CHUNK) * SUB_CHUNK) if chunk_size % SUB_CHUNK == 0 else min(chunk_size, T)
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
    # within-chunk inclusive cumulative log-decay [B, H, N, C, K] (per head: [B, H, N, C, 1]), kept in float64:
    # every exponent below is a difference of two of these, and in float32 a difference of two sums near -1000
    # would lose ~1e-4 of absolute precision
    prefix = g_h.reshape(B, H, N, C, 1 if per_head else K).to(torch.float64).cumsum(dim=3)
    prefix_last = prefix[:, :, :, -1:]

    if per_head:
        o_intra = _intra_per_head(q_c, k_c, v_c, prefix.squeeze(-1))
    else:
        o_intra = _intra_per_channel(q_c, k_c, v_c, prefix)

    # [B, H, N, K, V]: what each chunk adds to the state, already decayed to the chunk's end
    chunk_updates = (k_c * (prefix_last - prefix).to(acc).exp()).transpose(-1, -2) @ v_c
    # [B, H, N, K, 1]: decay of the whole chunk; broadcasts over V (and over K when per head)
    chunk_decays = prefix_last.transpose(-1, -2).to(acc).exp()
    state = q_c.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    # state entering each chunk: a short sequential scan over N chunks of [K, V] updates
    # (unbind, not indexing: the backward of N index ops would write N full-size zero tensors)
    entering = []
    for decay, update in zip(chunk_decays.unbind(2), chunk_updates.unbind(2)):
        entering.append(state)
        state = state * decay + update
    # [B, H, N, C, V]
    o_inter = (q_c * prefix.to(acc).exp()) @ torch.stack(entering, dim=2)

    o = (o_inter + o_intra).reshape(B, H, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(q.dtype), (state if output_final_state else None)


def _causal_mask(C: int, device: torch.device) -> torch.Tensor:
    """[C, C] bool, True where key j may feed query i (j <= i)."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril()


def _intra_per_head(q_c, k_c, v_c, prefix):
    """Intra-chunk output, one log-decay per head. q_c, k_c [B,H,N,C,K], v_c [B,H,N,C,V], prefix [B,H,N,C] float64."""
    C = prefix.shape[-1]
    # [B, H, N, C, C]: exp(b_i - b_j); above the diagonal the exponent is positive, so clamp it before masking
    exponent = (prefix.unsqueeze(-1) - prefix.unsqueeze(-2)).clamp_max(0).to(q_c.dtype)
    decay = exponent.exp() * _causal_mask(C, q_c.device)
    return ((q_c @ k_c.transpose(-1, -2)) * decay) @ v_c


def _intra_per_channel(q_c, k_c, v_c, prefix):
    """Intra-chunk output, a log-decay per key channel. q_c, k_c [B,H,N,C,K], v_c [B,H,N,C,V], prefix float64 like q_c.

    Sub-chunk s covers tokens [s*c, (s+1)*c) of the chunk; r_s is the prefix just before it (0 for s = 0).
    """
    B, H, N, C, K = q_c.shape
    V = v_c.shape[-1]
    acc = q_c.dtype
    c = SUB_CHUNK if C % SUB_CHUNK == 0 else C
    S = C // c
    q_s = q_c.reshape(B, H, N, S, c, K)
    k_s = k_c.reshape(B, H, N, S, c, K)
    v_s = v_c.reshape(B, H, N, S, c, V)
    prefix_s = prefix.reshape(B, H, N, S, c, K)
    # [B, H, N, S, 1, K]: prefix at the last token of each sub-chunk, and r_s
    sub_end = prefix_s[:, :, :, :, -1:]
    ref = torch.cat([torch.zeros_like(sub_end[:, :, :, :1]), sub_end[:, :, :, :-1]], dim=3)
    # [B, H, N, S, c, K]: log-decay from r_s to token i (<= 0, at most c steps: small, so float32 keeps it exact)
    local = (prefix_s - ref).to(acc)

    # pairs inside one sub-chunk, [B, H, N, S, c, c]
    scores = _sub_chunk_scores(q_s, k_s, local)
    o = scores @ v_s
    if S == 1:
        return o.reshape(B, H, N, C, V)

    # pairs across sub-chunks, i in sub-chunk s after j in sub-chunk t < s:
    #   exp(b_i - b_j) = exp(b_i - r_s) * exp(r_s - end_t) * exp(end_t - b_j), every factor <= 1
    q_ref = q_s * local.exp()
    # [B, H, N, S, c, K]: key j decayed to the end of its own sub-chunk
    k_to_end = k_s * (sub_end - prefix_s).to(acc).exp()
    # [B, H, N, S (rows), S (keys), 1, K]: r_s - end_t, clamped where t >= s (those pairs are masked below)
    between = (ref.unsqueeze(4) - sub_end.unsqueeze(3)).clamp_max(0).to(acc).exp()
    # [B, H, N, S, C, K]: every key of the chunk decayed to r_s
    k_ref = (k_to_end.unsqueeze(3) * between).reshape(B, H, N, S, C, K)
    # [S, C]: key j lies in a sub-chunk before row block s
    earlier = torch.arange(C, device=q_c.device).unsqueeze(0) < (torch.arange(S, device=q_c.device) * c).unsqueeze(1)
    # [B, H, N, S, c, C]
    scores = (q_ref @ k_ref.transpose(-1, -2)) * earlier.unsqueeze(-2)
    o = o + scores @ v_c.unsqueeze(3)
    return o.reshape(B, H, N, C, V)


def _sub_chunk_scores(q_s, k_s, local):
    """q_i . (k_j * exp(l_i - l_j)) for j <= i inside each sub-chunk. q_s, k_s, local [..., c, K] -> [..., c, c].

    `local` is the log-decay from the sub-chunk's reference point (<= 0, decreasing along c). Each (sub-chunk,
    channel) is either factored (decays by at most FACTOR_LIMIT over the sub-chunk) or exact.
    """
    c, K = local.shape[-2:]
    causal = _causal_mask(c, local.device)
    # [..., 1, K]: the last token has the most negative local decay of its sub-chunk
    factorable = local[..., -1:, :] >= -FACTOR_LIMIT
    # channels left out of the matmul get exponent 0 and q = 0, so they add nothing there
    bounded = torch.where(factorable, local, 0.0)
    q_factored = torch.where(factorable, q_s * bounded.exp(), 0.0)
    scores = (q_factored @ (k_s * (-bounded).exp()).transpose(-1, -2)) * causal
    if bool(factorable.all()):
        return scores
    # exact path for the other (sub-chunk, channel) pairs: [U, c, c] differences; -inf above the diagonal is
    # added before exp, so those entries are exactly 0 with gradient 0 and nothing can overflow
    rows, channels = (~factorable).reshape(-1, K).nonzero(as_tuple=True)
    q_u, k_u, local_u = (x.reshape(-1, c, K)[rows, :, channels] for x in (q_s, k_s, local))
    above_diagonal = torch.zeros(c, c, dtype=local.dtype, device=local.device).masked_fill_(~causal, float("-inf"))
    decay = (local_u.unsqueeze(-1) - local_u.unsqueeze(-2) + above_diagonal).exp()
    exact = q_u.unsqueeze(-1) * decay * k_u.unsqueeze(-2)
    return scores.reshape(-1, c, c).index_add(0, rows, exact).reshape(scores.shape)
