"""Backward of chunked gated linear attention.

legend: N tokens, H heads, K key dim, V value dim, C chunk, BC sub-chunk, BK key block, BV value tile, NC chunks,
NS sequences

Stages (prep.py has the forward quantities qg, kg, A, G, gl; h[c] is the state carried into chunk c):
1. state_grad: per (sequence, V tile), walk chunks backward with dS = grad of the state leaving chunk c:
       dv = A^T do + kg dS;   store dh[c] = dS;   dS <- diag(exp(gl)) dS + qg^T do
2. qk_grad: per chunk, loop over V tiles (the K-side gradients contract over all of V):
       dqg = do h^T, dkg = v dh^T, dA = do v^T (masked to j <= i, times scale)
       dq = scale exp(G) dqg + intra,  dk = exp(gl - G) dkg + intra
   Per-head decay finishes the intra terms and the decay gradient here; per-channel decay stores dA and leaves
   them to stage 3.
3. intra_channel: per (chunk, key block), the row blocks X from last to first: the intra terms with the same safe
   sub-block factoring as A, then the decay gradient with its in-chunk suffix sum carried from block to block.

The decay gradient: dg_t = sum_{s >= t in chunk c} (q_s dq_s - k_s dk_s) + rowsum(S_c * dS_c), with S_c the state
leaving chunk c and dS_c its gradient. Everything after chunk c enters only through S_c, and scaling S_c by exp(d) is
adding d to the next log-decay, hence the boundary term. Kept local to the chunk on purpose: the textbook sum over the
whole rest of the sequence cancels almost exactly when decays are strong, and loses every digit (seen: 8e-2 relative
error in bf16 at log-decay -20 per step). It finishes inside stage 2 or 3, so the backward is three launches (per-head
decay: two), with no [N, H, K] float32 row sums between them.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gla_bwd_kernel_state_grad(
    qg, kg, A, gl, do, dv, dht, dh0, dh_store,
    seq_tok0, seq_chunk0,
    H, K, V, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    """Grid (cdiv(V, BV), NS * H). Writes dv and dh [NC, H, K, V] (grad of the state leaving each chunk)."""
    iv = tl.program_id(0)
    ish = tl.program_id(1)
    s = ish // H
    h = ish % H
    tok_s = tl.load(seq_tok0 + s).to(tl.int64)
    tok_e = tl.load(seq_tok0 + s + 1).to(tl.int64)
    c0 = tl.load(seq_chunk0 + s)
    c1 = tl.load(seq_chunk0 + s + 1)
    rows = tl.arange(0, C)
    kcols = tl.arange(0, BK)
    vcols = iv * BV + tl.arange(0, BV)
    k_ok = kcols < K
    v_ok = vcols < V
    state_off = kcols[:, None] * V + vcols[None, :]
    state_mask = k_ok[:, None] & v_ok[None, :]
    if HAS_DHT:
        b_dS = tl.load(dht + ish.to(tl.int64) * K * V + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(0, c1 - c0):
        c = c1 - 1 - i
        tok0 = tok_s + (c - c0) * C
        row_ok = (tok0 + rows) < tok_e
        tl.store(dh_store + (c * H + h).to(tl.int64) * K * V + state_off,
                 b_dS.to(dh_store.dtype.element_ty), mask=state_mask)
        qk_off = ((tok0 + rows) * H + h)[:, None] * K + kcols[None, :]
        qk_mask = row_ok[:, None] & k_ok[None, :]
        b_qg = tl.load(qg + qk_off, mask=qk_mask, other=0.0)
        b_kg = tl.load(kg + qk_off, mask=qk_mask, other=0.0)
        v_off = ((tok0 + rows) * H + h)[:, None] * V + vcols[None, :]
        v_mask = row_ok[:, None] & v_ok[None, :]
        b_do = tl.load(do + v_off, mask=v_mask, other=0.0)
        b_A = tl.load(A + (c * H + h).to(tl.int64) * C * C + rows[:, None] * C + rows[None, :])
        b_gl = tl.load(gl + (c * H + h) * K + kcols, mask=k_ok, other=0.0)
        b_dv = tl.dot(tl.trans(b_A).to(b_do.dtype), b_do)
        b_dv += tl.dot(b_kg, b_dS.to(b_kg.dtype))
        tl.store(dv + v_off, b_dv.to(dv.dtype.element_ty), mask=v_mask)
        b_dS = b_dS * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_qg), b_do.to(b_qg.dtype))
    if STORE_DH0:
        tl.store(dh0 + ish.to(tl.int64) * K * V + state_off, b_dS, mask=state_mask)


@triton.jit
def gla_bwd_kernel_qk_grad(
    q, k, v, kg, G, gl, h_store, dh_store, do, dq, dk, dA_out, dg, dg_bound,
    chunk_tok0, chunk_len, scale,
    H, K, V, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
    HEAD_DECAY: tl.constexpr,
):
    """Grid (NC, H). Per-head decay: final dq, dk (input dtype) and dg [N, H], the reverse cumulative sum over the
    chunk of sum_k (q dq - k dk) plus the boundary term. Per-channel decay: inter-chunk dq, dk (fp32), dA
    [NC, H, C, C] and the boundary term for the intra stage, which finishes dq, dk and dg.
    Both: dg_bound [NC, H, K] = rowsum(S_c * dS_c) with S_c = exp(gl) h[c] + kg^T v, i.e.
    exp(gl) * rowsum(h[c] * dh[c]) + colsum(kg * dkg): no extra matrix product."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    tok0 = tl.load(chunk_tok0 + c).to(tl.int64)
    n = tl.load(chunk_len + c)
    rows = tl.arange(0, C)
    kcols = tl.arange(0, BK)
    row_ok = rows < n
    k_ok = kcols < K
    state_base = (c * H + h).to(tl.int64) * K * V
    b_dqg = tl.zeros([C, BK], dtype=tl.float32)
    b_dkg = tl.zeros([C, BK], dtype=tl.float32)
    b_dA = tl.zeros([C, C], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    qk_off = ((tok0 + rows) * H + h)[:, None] * K + kcols[None, :]
    qk_mask = row_ok[:, None] & k_ok[None, :]
    b_kg = tl.load(kg + qk_off, mask=qk_mask, other=0.0)
    b_gl = tl.load(gl + (c * H + h) * K + kcols, mask=k_ok, other=0.0)
    for v0 in range(0, V, BV):
        vcols = v0 + tl.arange(0, BV)
        v_ok = vcols < V
        state_off = state_base + kcols[:, None] * V + vcols[None, :]
        state_mask = k_ok[:, None] & v_ok[None, :]
        b_h = tl.load(h_store + state_off, mask=state_mask, other=0.0)
        b_dh = tl.load(dh_store + state_off, mask=state_mask, other=0.0)
        v_off = ((tok0 + rows) * H + h)[:, None] * V + vcols[None, :]
        v_mask = row_ok[:, None] & v_ok[None, :]
        b_do = tl.load(do + v_off, mask=v_mask, other=0.0)
        b_v = tl.load(v + v_off, mask=v_mask, other=0.0)
        b_dqg += tl.dot(b_do, tl.trans(b_h).to(b_do.dtype))
        b_dkg += tl.dot(b_v, tl.trans(b_dh).to(b_v.dtype))
        b_dA += tl.dot(b_do, tl.trans(b_v))
        b_hdh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
    b_bound = tl.exp(b_gl) * b_hdh + tl.sum(b_kg.to(tl.float32) * b_dkg, axis=0)
    tl.store(dg_bound + (c * H + h) * K + kcols, b_bound, mask=k_ok)
    causal = (rows[:, None] >= rows[None, :]) & row_ok[:, None]
    b_dA = tl.where(causal, b_dA * scale, 0.0)
    if HEAD_DECAY:
        b_G = tl.load(G + (tok0 + rows) * H + h, mask=row_ok, other=0.0)
        b_gl_head = tl.load(gl + (c * H + h) * K)
        b_dq = b_dqg * (tl.exp(b_G) * scale)[:, None]
        b_dk = b_dkg * tl.exp(tl.where(row_ok, b_gl_head - b_G, 0.0))[:, None]
        b_q = tl.load(q + qk_off, mask=qk_mask, other=0.0)
        b_k = tl.load(k + qk_off, mask=qk_mask, other=0.0)
        # the diagonal (i = j) adds dA_ii q_i k_i to both q dq and k dk: it cancels exactly in the decay gradient,
        # so it stays out of the matrix products (tf32 would round the two copies differently) and out of dg_rows
        strict = (rows[:, None] > rows[None, :]) & row_ok[:, None]
        b_M = b_dA * tl.exp(tl.where(strict, b_G[:, None] - b_G[None, :], float("-inf")))
        b_dA_diag = tl.sum(tl.where(rows[:, None] == rows[None, :], b_dA, 0.0), axis=1)
        b_dq += tl.dot(b_M.to(b_k.dtype), b_k)
        b_dk += tl.dot(tl.trans(b_M).to(b_q.dtype), b_q)
        b_qf = b_q.to(tl.float32)
        b_kf = b_k.to(tl.float32)
        b_r = tl.sum(b_qf * b_dq - b_kf * b_dk, axis=1)
        # dg_t = sum of the rows s >= t of the chunk + the boundary term (summed over K: one decay per head)
        b_dg = tl.cumsum(b_r, axis=0, reverse=True) + tl.sum(b_bound, axis=0)
        tl.store(dg + (tok0 + rows) * H + h, b_dg.to(dg.dtype.element_ty), mask=row_ok)
        b_dq += b_dA_diag[:, None] * b_kf
        b_dk += b_dA_diag[:, None] * b_qf
        tl.store(dq + qk_off, b_dq.to(dq.dtype.element_ty), mask=qk_mask)
        tl.store(dk + qk_off, b_dk.to(dk.dtype.element_ty), mask=qk_mask)
    else:
        b_G = tl.load(G + qk_off, mask=qk_mask, other=0.0)
        b_dq = b_dqg * tl.exp(b_G) * scale
        b_dk = b_dkg * tl.exp(tl.where(qk_mask, b_gl[None, :] - b_G, 0.0))
        tl.store(dq + qk_off, b_dq, mask=qk_mask)
        tl.store(dk + qk_off, b_dk, mask=qk_mask)
        tl.store(dA_out + (c * H + h).to(tl.int64) * C * C + rows[:, None] * C + rows[None, :], b_dA)


@triton.jit
def gla_bwd_kernel_intra_channel(
    q, k, G, dA, dq_inter, dk_inter, dq, dk, dg_bound, dg,
    chunk_tok0, chunk_len,
    H, K, C: tl.constexpr, BC: tl.constexpr, BKI: tl.constexpr,
):
    """Per-channel decay. Grid (NC, H, cdiv(K, BKI)): every row block X of one chunk for one key block of BKI
    channels, the last block first, so the decay gradient's reverse cumulative sum over the chunk finishes here
    (carried from block to block, starting from the chunk's boundary term). dA already carries the scale and the
    causal mask. Writes dq, dk (input dtype) and dg (g's dtype)."""
    c = tl.program_id(0)
    h = tl.program_id(1)
    kb = tl.program_id(2)
    tok0 = tl.load(chunk_tok0 + c).to(tl.int64)
    n = tl.load(chunk_len + c)
    sub = tl.arange(0, BC)
    kcols = kb * BKI + tl.arange(0, BKI)
    k_ok = kcols < K
    dA_base = dA + (c * H + h).to(tl.int64) * C * C
    # dg of a row = its own q dq - k dk, plus that of every later row of the chunk, plus the boundary term
    b_carry = tl.load(dg_bound + (c * H + h) * K + kcols, mask=k_ok, other=0.0)
    for step in range(0, C // BC):
        blk_x = C // BC - 1 - step
        if blk_x * BC < n:
            rows_x = blk_x * BC + sub
            ok_x = rows_x < n
            off_x = ((tok0 + rows_x) * H + h)[:, None] * K + kcols[None, :]
            mask_x = ok_x[:, None] & k_ok[None, :]
            b_q = tl.load(q + off_x, mask=mask_x, other=0.0).to(tl.float32)
            b_k = tl.load(k + off_x, mask=mask_x, other=0.0).to(tl.float32)
            b_G = tl.load(G + off_x, mask=mask_x, other=0.0)
            b_dq = tl.load(dq_inter + off_x, mask=mask_x, other=0.0)
            b_dk = tl.load(dk_inter + off_x, mask=mask_x, other=0.0)
            # dq of block X from earlier blocks J, through reference row r = first row of X
            b_Gr = tl.load(G + ((tok0 + blk_x * BC) * H + h) * K + kcols, mask=k_ok, other=0.0)
            b_acc = tl.zeros([BC, BKI], dtype=tl.float32)
            for blk_j in range(0, blk_x):
                rows_j = blk_j * BC + sub
                off_j = ((tok0 + rows_j) * H + h)[:, None] * K + kcols[None, :]
                b_kj = tl.load(k + off_j, mask=k_ok[None, :], other=0.0).to(tl.float32)
                b_Gj = tl.load(G + off_j, mask=k_ok[None, :], other=0.0)
                b_kj_r = (b_kj * tl.exp(b_Gr[None, :] - b_Gj)).to(k.dtype.element_ty)
                b_dA_xj = tl.load(dA_base + rows_x[:, None] * C + rows_j[None, :])
                b_acc += tl.dot(b_dA_xj.to(k.dtype.element_ty), b_kj_r)
            b_dq += b_acc * tl.exp(tl.where(mask_x, b_G - b_Gr[None, :], 0.0))
            # dk of block X from later blocks I, each through its own reference row r_I = first row of I
            for blk_i in range(blk_x + 1, C // BC):
                if blk_i * BC < n:
                    rows_i = blk_i * BC + sub
                    ok_i = rows_i < n
                    off_i = ((tok0 + rows_i) * H + h)[:, None] * K + kcols[None, :]
                    mask_i = ok_i[:, None] & k_ok[None, :]
                    b_qi = tl.load(q + off_i, mask=mask_i, other=0.0).to(tl.float32)
                    b_Gi = tl.load(G + off_i, mask=mask_i, other=0.0)
                    b_Gri = tl.load(G + ((tok0 + blk_i * BC) * H + h) * K + kcols, mask=k_ok, other=0.0)
                    b_qi_r = (b_qi * tl.exp(tl.where(mask_i, b_Gi - b_Gri[None, :], 0.0))).to(q.dtype.element_ty)
                    b_dA_ix = tl.load(dA_base + rows_i[:, None] * C + rows_x[None, :])
                    b_t = tl.dot(tl.trans(b_dA_ix).to(q.dtype.element_ty), b_qi_r)
                    b_dk += b_t * tl.exp(tl.where(mask_x, b_Gri[None, :] - b_G, 0.0))
            # diagonal block, element by element
            b_dA_xx = tl.load(dA_base + rows_x[:, None] * C + rows_x[None, :])
            strict = (sub[:, None] > sub[None, :]) & ok_x[:, None]
            b_E = tl.exp(tl.where(strict[:, :, None], b_G[:, None, :] - b_G[None, :, :], float("-inf")))
            b_E = b_E * b_dA_xx[:, :, None]
            b_dq += tl.sum(b_E * b_k[None, :, :], axis=1)
            b_dk += tl.sum(b_E * b_q[:, None, :], axis=0)
            # the i = j terms (dA_ii q_i k_i in both q dq and k dk) cancel exactly in the decay gradient: leave them out
            b_rows = b_q * b_dq - b_k * b_dk
            tl.store(dg + off_x, (tl.cumsum(b_rows, axis=0, reverse=True) + b_carry[None, :]).to(dg.dtype.element_ty),
                     mask=mask_x)
            b_carry += tl.sum(b_rows, axis=0)
            b_dA_diag = tl.sum(tl.where(sub[:, None] == sub[None, :], b_dA_xx, 0.0), axis=1)
            b_dq += b_dA_diag[:, None] * b_k
            b_dk += b_dA_diag[:, None] * b_q
            tl.store(dq + off_x, b_dq.to(dq.dtype.element_ty), mask=mask_x)
            tl.store(dk + off_x, b_dk.to(dk.dtype.element_ty), mask=mask_x)
