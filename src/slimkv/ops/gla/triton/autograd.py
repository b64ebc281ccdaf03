"""Host side of the Triton gated-linear-attention kernels: chunk tables, launches, and the autograd.Function.

legend: B batch, T time, H heads, K key dim, V value dim, C chunk, N tokens (B * T, or packed), NS sequences,
NC chunks (over all sequences)

Every sequence (a batch row, or a cu_seqlens segment) is cut into chunks of C tokens that never cross a sequence
boundary; kernels see flat token-major tensors [N, H, *] and two tables:
    seq_tok0 [NS + 1]   first token of each sequence (= cu_seqlens)
    seq_chunk0 [NS + 1] first chunk of each sequence
    chunk_tok0 [NC], chunk_len [NC]: first token and valid length of each chunk
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
from triton.runtime.errors import OutOfResources

from .chunk_bwd import gla_bwd_kernel_intra_channel, gla_bwd_kernel_qk_grad, gla_bwd_kernel_state_grad
from .chunk_fwd import gla_fwd_kernel_state
from .prep import gla_fwd_kernel_intra_channel, gla_fwd_kernel_intra_head, gla_fwd_kernel_prep

CHUNK = 64
SUB_CHUNK = 16


@dataclass
class Tuning:
    """Launch parameters; the GPU benchmark sweeps them. BV_*: value tile of each stage."""

    # defaults: fastest of the sweep at B8 T2048 H1 K64 V4096 bf16 on an H100 (docs/kernels.md)
    bv_fwd: int = 32
    warps_fwd: int = 4
    stages_fwd: int = 3
    bv_dh: int = 64
    warps_dh: int = 8
    stages_dh: int = 2
    bv_dqk: int = 128
    warps_dqk: int = 8
    stages_dqk: int = 2
    # per-chunk states kept for the backward: "auto" = input dtype (bf16 for bf16 inputs), or "float32"
    state_store: str = "auto"


TUNING = Tuning()


@dataclass(frozen=True)
class ChunkTables:
    seq_tok0: torch.Tensor
    seq_chunk0: torch.Tensor
    chunk_tok0: torch.Tensor
    chunk_len: torch.Tensor
    num_seqs: int
    num_chunks: int


@functools.lru_cache(maxsize=64)
def _tables_cached(lengths: tuple[int, ...], chunk: int, device: torch.device) -> ChunkTables:
    lens = torch.tensor(lengths, dtype=torch.int64)
    seq_tok0 = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    seq_tok0[1:] = lens.cumsum(0)
    n_chunks = (lens + chunk - 1) // chunk
    seq_chunk0 = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    seq_chunk0[1:] = n_chunks.cumsum(0)
    num_chunks = int(seq_chunk0[-1])
    chunk_seq = torch.repeat_interleave(torch.arange(len(lengths)), n_chunks)
    chunk_tok0 = seq_tok0[chunk_seq] + (torch.arange(num_chunks) - seq_chunk0[chunk_seq]) * chunk
    chunk_len = torch.minimum(seq_tok0[chunk_seq + 1] - chunk_tok0, torch.tensor(chunk))
    as_dev = functools.partial(torch.Tensor.to, device=device, dtype=torch.int32)
    return ChunkTables(as_dev(seq_tok0), as_dev(seq_chunk0), as_dev(chunk_tok0), as_dev(chunk_len),
                       len(lengths), num_chunks)


def chunk_tables(B: int, T: int, cu_seqlens: torch.Tensor | None, device: torch.device) -> ChunkTables:
    if cu_seqlens is None:
        lengths = (T,) * B
    else:
        bounds = cu_seqlens.tolist()
        lengths = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return _tables_cached(lengths, CHUNK, device)


def _launch(kernel, grid, *args, num_stages: int, **kwargs):
    """Launch with `num_stages` pipeline stages, fewer if the stage buffers do not fit in shared memory
    (fp32 operands take twice the room of bf16 ones)."""
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else id(kernel), num_stages, args[0].dtype,
           tuple(sorted(kwargs.items())))
    for stages in range(_FITTING_STAGES.get(key, num_stages), 0, -1):
        try:
            out = kernel[grid](*args, num_stages=stages, **kwargs)
        except OutOfResources:
            if stages == 1:
                raise
            continue
        _FITTING_STAGES[key] = stages
        return out


_FITTING_STAGES: dict = {}


def _block(n: int) -> int:
    return max(triton.next_power_of_2(n), 16)


def _forward(q, k, v, g, scale, h0, tables: ChunkTables, store_final: bool, store_h: bool):
    """q, k [N, H, K]; v [N, H, V]; g [N, H, K] or [N, H]. Returns o, final state, and what the backward needs."""
    N, H, K = q.shape
    V = v.shape[-1]
    head_decay = g.dim() == 2
    BK = _block(K)
    NC, NS = tables.num_chunks, tables.num_seqs
    dev = q.device
    G = torch.empty(g.shape, dtype=torch.float32, device=dev)
    qg = torch.empty_like(q)
    kg = torch.empty_like(k)
    gl = torch.empty(NC, H, K, dtype=torch.float32, device=dev)
    A = torch.empty(NC, H, CHUNK, CHUNK, dtype=torch.float32, device=dev)
    gla_fwd_kernel_prep[(NC, H)](
        q, k, g, G, qg, kg, gl, tables.chunk_tok0, tables.chunk_len, scale,
        H=H, K=K, BK=BK, C=CHUNK, HEAD_DECAY=head_decay, num_warps=4)
    if head_decay:
        gla_fwd_kernel_intra_head[(NC, H)](
            q, k, G, A, tables.chunk_tok0, tables.chunk_len, scale, H=H, K=K, BK=BK, C=CHUNK, num_warps=4)
    else:
        gla_fwd_kernel_intra_channel[(NC, H, CHUNK // SUB_CHUNK)](
            q, k, G, A, tables.chunk_tok0, tables.chunk_len, scale,
            H=H, K=K, BK=BK, C=CHUNK, BC=SUB_CHUNK, BKD=min(BK, 32), num_warps=4)
    o = torch.empty_like(v)
    ht = torch.empty(NS, H, K, V, dtype=torch.float32, device=dev) if store_final else None
    h_dtype = torch.float32 if TUNING.state_store == "float32" else q.dtype
    h = torch.empty(NC, H, K, V, dtype=h_dtype, device=dev) if store_h else None
    BV = min(TUNING.bv_fwd, _block(V))
    _launch(gla_fwd_kernel_state, (triton.cdiv(V, BV), NS * H),
        qg, kg, v, A, gl, o, h0, ht, h, tables.seq_tok0, tables.seq_chunk0,
        H=H, K=K, V=V, BK=BK, BV=BV, C=CHUNK,
        HAS_H0=h0 is not None, STORE_HT=store_final, STORE_H=store_h,
        num_warps=TUNING.warps_fwd, num_stages=TUNING.stages_fwd)
    return o, ht, (G, qg, kg, gl, A, h)


def _backward(q, k, v, g, scale, saved, tables: ChunkTables, do, dht, need_dh0: bool):
    G, qg, kg, gl, A, h = saved
    N, H, K = q.shape
    V = v.shape[-1]
    head_decay = g.dim() == 2
    BK = _block(K)
    NC, NS = tables.num_chunks, tables.num_seqs
    dev = q.device
    dh = torch.empty(NC, H, K, V, dtype=h.dtype, device=dev)
    dv = torch.empty_like(v)
    dh0 = torch.empty(NS, H, K, V, dtype=torch.float32, device=dev) if need_dh0 else None
    BV = min(TUNING.bv_dh, _block(V))
    _launch(gla_bwd_kernel_state_grad, (triton.cdiv(V, BV), NS * H),
        qg, kg, A, gl, do, dv, dht, dh0, dh, tables.seq_tok0, tables.seq_chunk0,
        H=H, K=K, V=V, BK=BK, BV=BV, C=CHUNK, HAS_DHT=dht is not None, STORE_DH0=need_dh0,
        num_warps=TUNING.warps_dh, num_stages=TUNING.stages_dh)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dg = torch.empty_like(g)
    dg_bound = torch.empty(NC, H, K, dtype=torch.float32, device=dev)
    BV = min(TUNING.bv_dqk, _block(V))
    if head_decay:
        _launch(gla_bwd_kernel_qk_grad, (NC, H),
            q, k, v, kg, G, gl, h, dh, do, dq, dk, None, dg, dg_bound, tables.chunk_tok0, tables.chunk_len, scale,
            H=H, K=K, V=V, BK=BK, BV=BV, C=CHUNK, HEAD_DECAY=True,
            num_warps=TUNING.warps_dqk, num_stages=TUNING.stages_dqk)
    else:
        dq_inter = torch.empty(q.shape, dtype=torch.float32, device=dev)
        dk_inter = torch.empty(k.shape, dtype=torch.float32, device=dev)
        dA = torch.empty(NC, H, CHUNK, CHUNK, dtype=torch.float32, device=dev)
        _launch(gla_bwd_kernel_qk_grad, (NC, H),
            q, k, v, kg, G, gl, h, dh, do, dq_inter, dk_inter, dA, None, dg_bound, tables.chunk_tok0, tables.chunk_len, scale,
            H=H, K=K, V=V, BK=BK, BV=BV, C=CHUNK, HEAD_DECAY=False,
            num_warps=TUNING.warps_dqk, num_stages=TUNING.stages_dqk)
        BKI = min(BK, 32)
        gla_bwd_kernel_intra_channel[(NC, H, triton.cdiv(K, BKI))](
            q, k, G, dA, dq_inter, dk_inter, dq, dk, dg_bound, dg, tables.chunk_tok0, tables.chunk_len,
            H=H, K=K, C=CHUNK, BC=SUB_CHUNK, BKI=BKI, num_warps=4)
    return dq, dk, dv, dg, dh0


class GlaTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, h0, output_final_state, tables, training):
        o, ht, saved = _forward(q, k, v, g, scale, h0, tables, output_final_state, store_h=training)
        if training:
            ctx.save_for_backward(q, k, v, g, *saved)
        ctx.scale = scale
        ctx.tables = tables
        ctx.h0_shape = None if h0 is None else (h0.shape, h0.dtype)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, *saved = ctx.saved_tensors
        do = do.contiguous()
        dht = None if dht is None else dht.contiguous()
        need_dh0 = ctx.needs_input_grad[5]
        dq, dk, dv, dg, dh0 = _backward(q, k, v, g, ctx.scale, saved, ctx.tables, do, dht, need_dh0)
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_shape[1])
        return dq, dk, dv, dg, None, dh0, None, None, None


def gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated linear attention in Triton, with autograd (same contract as `slimkv.ops.gla.gla`).

    Args:
        q, k: [B, T, H, K].  v: [B, T, H, V].
        log_decay: [B, T, H, K] (per key channel) or [B, T, H] (per head); <= 0.
        scale: query scale, default K ** -0.5.
        initial_state: [NS, H, K, V] (NS = B, or the number of packed sequences with cu_seqlens).
        output_final_state: also return the state after each sequence's last token, [NS, H, K, V] float32.
        cu_seqlens: [NS + 1] int cumulative lengths of sequences packed along T (requires B == 1); the state
            restarts (from initial_state[i], or zeros) at every boundary.
    Returns:
        o [B, T, H, V] in q's dtype, and the final state or None.

    Example:
        >>> cu = torch.tensor([0, 100, 356], device="cuda")
        >>> o, S = gla_triton(q, k, v, g, cu_seqlens=cu, output_final_state=True)   # q: [1, 356, H, K]
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"gla_triton: need q, k [B, T, H, K] and v [B, T, H, V]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if log_decay.shape not in (q.shape, (B, T, H)):
        raise ValueError(f"gla_triton: log_decay must be [B, T, H, K] or [B, T, H]; got {tuple(log_decay.shape)}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"gla_triton: cu_seqlens needs the sequences packed into batch 1; got B = {B}")
        if cu_seqlens.dim() != 1 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"gla_triton: cu_seqlens must be [NS + 1] from 0 to T = {T}")
    tables = chunk_tables(B, T, cu_seqlens, q.device)
    if initial_state is not None and initial_state.shape != (tables.num_seqs, H, K, V):
        raise ValueError(f"gla_triton: initial_state must be [{tables.num_seqs}, H, K, V] = "
                         f"{(tables.num_seqs, H, K, V)}; got {tuple(initial_state.shape)}")
    scale = K**-0.5 if scale is None else float(scale)
    dtype = q.dtype
    # one operand dtype for the matrix units; accumulation and the state are fp32 regardless
    q, k, v = (x.to(dtype).reshape(B * T, H, -1).contiguous() for x in (q, k, v))
    g = log_decay.reshape(B * T, H, -1) if log_decay.dim() == 4 else log_decay.reshape(B * T, H)
    g = g.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    training = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, h0))
    o, ht = GlaTritonFunction.apply(q, k, v, g, scale, h0, output_final_state, tables, training)
    return o.reshape(B, T, H, V), ht
