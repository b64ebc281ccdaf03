"""Per-chunk preparation for chunked gated linear attention: cumulative log-decay, decayed q/k, intra-chunk scores.

legend: N tokens (all sequences packed), H heads, K key dim, C chunk, BC sub-chunk, BK key block, NC chunks

Inside chunk c (rows i, j), with G the chunk-local cumulative log-decay (G_i <= 0, non-increasing) and
Gl = G at the chunk's last row:
    qg_i = scale * q_i * exp(G_i)            (reads the state carried into the chunk)
    kg_j = k_j * exp(Gl - G_j)               (writes into the state carried out of the chunk)
    A_ij = scale * sum_k q_ik k_jk exp(G_ik - G_jk),   j <= i
Every exponent is <= 0. For per-channel decay A is built from BC x BC sub-blocks: block (I, J < I) factors through
the reference row r = first row of I (i >= r > j), and diagonal blocks are computed element by element.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gla_fwd_kernel_prep(
    q, k, g, G_out, qg_out, kg_out, gl_out,
    chunk_tok0, chunk_len, scale,
    H, K, BK: tl.constexpr, C: tl.constexpr, HEAD_DECAY: tl.constexpr,
):
    """Grid (NC, H). Writes G [N, H(, K)] fp32, qg/kg [N, H, K] (input dtype), gl [NC, H, K] fp32."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    tok0 = tl.load(chunk_tok0 + c).to(tl.int64)
    n = tl.load(chunk_len + c)
    rows = tl.arange(0, C)
    cols = tl.arange(0, BK)
    row_ok = rows < n
    col_ok = cols < K
    mask = row_ok[:, None] & col_ok[None, :]
    qk_off = ((tok0 + rows) * H + h)[:, None] * K + cols[None, :]
    b_q = tl.load(q + qk_off, mask=mask, other=0.0).to(tl.float32)
    b_k = tl.load(k + qk_off, mask=mask, other=0.0).to(tl.float32)
    if HEAD_DECAY:
        b_g = tl.load(g + (tok0 + rows) * H + h, mask=row_ok, other=0.0).to(tl.float32)
        b_G = tl.cumsum(b_g, axis=0)
        tl.store(G_out + (tok0 + rows) * H + h, b_G, mask=row_ok)
        b_gl = tl.sum(tl.where(rows == n - 1, b_G, 0.0), axis=0)
        b_qg = b_q * tl.exp(b_G)[:, None] * scale
        b_kg = b_k * tl.exp(b_gl - b_G)[:, None]
        tl.store(gl_out + (c * H + h) * K + cols, tl.zeros([BK], dtype=tl.float32) + b_gl, mask=col_ok)
    else:
        b_g = tl.load(g + qk_off, mask=mask, other=0.0).to(tl.float32)
        b_G = tl.cumsum(b_g, axis=0)
        tl.store(G_out + qk_off, b_G, mask=mask)
        b_gl = tl.sum(tl.where((rows == n - 1)[:, None], b_G, 0.0), axis=0)
        b_qg = b_q * tl.exp(b_G) * scale
        b_kg = b_k * tl.exp(b_gl[None, :] - b_G)
        tl.store(gl_out + (c * H + h) * K + cols, b_gl, mask=col_ok)
    tl.store(qg_out + qk_off, b_qg.to(qg_out.dtype.element_ty), mask=mask)
    tl.store(kg_out + qk_off, b_kg.to(kg_out.dtype.element_ty), mask=mask)


@triton.jit
def gla_fwd_kernel_intra_head(
    q, k, G, A_out, chunk_tok0, chunk_len, scale,
    H, K, BK: tl.constexpr, C: tl.constexpr,
):
    """Per-head decay. Grid (NC, H). A [NC, H, C, C] fp32, zero above the diagonal and outside the sequence."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    tok0 = tl.load(chunk_tok0 + c).to(tl.int64)
    n = tl.load(chunk_len + c)
    rows = tl.arange(0, C)
    cols = tl.arange(0, BK)
    row_ok = rows < n
    mask = row_ok[:, None] & (cols < K)[None, :]
    qk_off = ((tok0 + rows) * H + h)[:, None] * K + cols[None, :]
    b_q = tl.load(q + qk_off, mask=mask, other=0.0)
    b_k = tl.load(k + qk_off, mask=mask, other=0.0)
    b_G = tl.load(G + (tok0 + rows) * H + h, mask=row_ok, other=0.0)
    causal = (rows[:, None] >= rows[None, :]) & row_ok[:, None]
    b_A = tl.dot(b_q, tl.trans(b_k))
    b_A = b_A * tl.exp(tl.where(causal, b_G[:, None] - b_G[None, :], float("-inf"))) * scale
    tl.store(A_out + (c * H + h) * C * C + rows[:, None] * C + rows[None, :], b_A)


@triton.jit
def gla_fwd_kernel_intra_channel(
    q, k, G, A_out, chunk_tok0, chunk_len, scale,
    H, K, BK: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BKD: tl.constexpr,
):
    """Per-channel decay. Grid (NC, H, C // BC): one program per row block I of A. BKD: key block of the diagonal."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    blk_i = tl.program_id(2)
    tok0 = tl.load(chunk_tok0 + c).to(tl.int64)
    n = tl.load(chunk_len + c)
    sub = tl.arange(0, BC)
    cols = tl.arange(0, BK)
    col_ok = cols < K
    rows_i = blk_i * BC + sub
    ok_i = rows_i < n
    a_base = A_out + (c * H + h) * C * C + rows_i[:, None] * C
    if blk_i * BC >= n:
        # the whole row block lies past the sequence end
        for blk_j in range(0, C // BC):
            tl.store(a_base + (blk_j * BC + sub)[None, :], tl.zeros([BC, BC], dtype=tl.float32))
    else:
        off_i = ((tok0 + rows_i) * H + h)[:, None] * K + cols[None, :]
        mask_i = ok_i[:, None] & col_ok[None, :]
        b_qi = tl.load(q + off_i, mask=mask_i, other=0.0).to(tl.float32)
        b_Gi = tl.load(G + off_i, mask=mask_i, other=0.0)
        # reference row r = first row of block I
        b_Gr = tl.load(G + ((tok0 + blk_i * BC) * H + h) * K + cols, mask=col_ok, other=0.0)
        b_qi_r = b_qi * tl.exp(tl.where(mask_i, b_Gi - b_Gr[None, :], 0.0)) * scale
        b_qi_r = b_qi_r.to(q.dtype.element_ty)
        for blk_j in range(0, blk_i):
            rows_j = blk_j * BC + sub
            off_j = ((tok0 + rows_j) * H + h)[:, None] * K + cols[None, :]
            b_kj = tl.load(k + off_j, mask=col_ok[None, :], other=0.0).to(tl.float32)
            b_Gj = tl.load(G + off_j, mask=col_ok[None, :], other=0.0)
            b_kj_r = (b_kj * tl.exp(b_Gr[None, :] - b_Gj)).to(k.dtype.element_ty)
            tl.store(a_base + rows_j[None, :], tl.dot(b_qi_r, tl.trans(b_kj_r)))
        # diagonal block, element by element over key blocks of BKD channels
        causal = (sub[:, None] >= sub[None, :]) & ok_i[:, None]
        b_Aii = tl.zeros([BC, BC], dtype=tl.float32)
        for kb in range(0, K, BKD):
            kcols = kb + tl.arange(0, BKD)
            off_d = ((tok0 + rows_i) * H + h)[:, None] * K + kcols[None, :]
            mask_d = ok_i[:, None] & (kcols < K)[None, :]
            b_q = tl.load(q + off_d, mask=mask_d, other=0.0).to(tl.float32)
            b_k = tl.load(k + off_d, mask=mask_d, other=0.0).to(tl.float32)
            b_G = tl.load(G + off_d, mask=mask_d, other=0.0)
            b_d = tl.where(causal[:, :, None], b_G[:, None, :] - b_G[None, :, :], float("-inf"))
            b_Aii += tl.sum(b_q[:, None, :] * b_k[None, :, :] * tl.exp(b_d), axis=2)
        tl.store(a_base + rows_i[None, :], b_Aii * scale)
        for blk_j in range(blk_i + 1, C // BC):
            tl.store(a_base + (blk_j * BC + sub)[None, :], tl.zeros([BC, BC], dtype=tl.float32))
