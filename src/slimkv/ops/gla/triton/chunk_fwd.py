"""Forward state pass of chunked gated linear attention: one program walks one sequence's chunks for a V tile.

legend: N tokens, H heads, K key dim, V value dim, C chunk, BK key block (all of K), BV value tile, NC chunks, NS seqs

Per chunk, with S the [K, BV] state carried in (fp32, in registers):
    o     = qg S + A v                       [C, BV]
    S_out = diag(exp(gl)) S + kg^T v
The state never leaves the chip except, when training, a copy per chunk start (h [NC, H, K, V]) for the backward.
The value dimension is independent column by column, so V is split over programs (Rodimus has V = 4096, H = 1).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gla_fwd_kernel_state(
    qg, kg, v, A, gl, o, h0, ht, h_store,
    seq_tok0, seq_chunk0,
    H, K, V, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_H: tl.constexpr,
):
    """Grid (cdiv(V, BV), NS * H)."""
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
    if HAS_H0:
        b_S = tl.load(h0 + ish.to(tl.int64) * K * V + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        b_S = tl.zeros([BK, BV], dtype=tl.float32)
    for c in range(c0, c1):
        tok0 = tok_s + (c - c0) * C
        row_ok = (tok0 + rows) < tok_e
        if STORE_H:
            tl.store(h_store + (c * H + h).to(tl.int64) * K * V + state_off,
                     b_S.to(h_store.dtype.element_ty), mask=state_mask)
        qk_off = ((tok0 + rows) * H + h)[:, None] * K + kcols[None, :]
        qk_mask = row_ok[:, None] & k_ok[None, :]
        b_qg = tl.load(qg + qk_off, mask=qk_mask, other=0.0)
        b_kg = tl.load(kg + qk_off, mask=qk_mask, other=0.0)
        v_off = ((tok0 + rows) * H + h)[:, None] * V + vcols[None, :]
        v_mask = row_ok[:, None] & v_ok[None, :]
        b_v = tl.load(v + v_off, mask=v_mask, other=0.0)
        b_A = tl.load(A + (c * H + h).to(tl.int64) * C * C + rows[:, None] * C + rows[None, :])
        b_gl = tl.load(gl + (c * H + h) * K + kcols, mask=k_ok, other=0.0)
        b_o = tl.dot(b_qg, b_S.to(b_qg.dtype))
        b_o += tl.dot(b_A.to(b_v.dtype), b_v)
        tl.store(o + v_off, b_o.to(o.dtype.element_ty), mask=v_mask)
        b_S = b_S * tl.exp(b_gl)[:, None] + tl.dot(tl.trans(b_kg), b_v.to(b_kg.dtype))
    if STORE_HT:
        tl.store(ht + ish.to(tl.int64) * K * V + state_off, b_S, mask=state_mask)
