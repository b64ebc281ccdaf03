"""Fused Triton kernels for one decode token; the contracts (and the specs) are in ops/decode/reference.py.

legend: B batch, C channels, K conv taps, e DDTS inner width, m memory size, r channel-gate rank,
        H heads, D head dim, S ring slots

At batch 1 a decode step is hundreds of tiny launches, so each kernel here replaces a chain of PyTorch ops (and their
float32 round trips through memory) with one pass over its inputs. States are updated in place and every launch has
a grid fixed by the shapes alone: no host syncs, so the whole step can be captured in a CUDA graph. Intermediate
roundings to the model dtype are reproduced where the sequence path rounds, so bf16 results track it closely.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _log1p(y):
    # accurate log(1 + y) for small y without libdevice (Goldberg): log(u) * y / (u - 1), u = 1 + y
    u = 1.0 + y
    d = u - 1.0
    return tl.where(d == 0.0, y, tl.log(u) * (y / tl.where(d == 0.0, 1.0, d)))


# --- short conv + SiLU ----------------------------------------------------------------------------------------


@triton.jit
def _conv_silu_step_kernel(x, weight, bias, state, y, C, x_stride, s_stride_b, s_stride_c, y_stride,
                           K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (B, cdiv(C, BLOCK)). state [B, C, K - 1] holds the previous inputs oldest first; shifted in place."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < C
    xv = tl.load(x + row * x_stride + cols, mask=ok, other=0.0)
    taps = state + row * s_stride_b + cols * s_stride_c
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(K - 1):
        # the sequence path casts the carried inputs to x's dtype before the taps
        prev = tl.load(taps + j, mask=ok, other=0.0).to(xv.dtype).to(tl.float32)
        acc += tl.load(weight + cols * K + j, mask=ok, other=0.0).to(tl.float32) * prev
    acc += tl.load(weight + cols * K + (K - 1), mask=ok, other=0.0).to(tl.float32) * xv.to(tl.float32)
    for j in tl.static_range(K - 2):
        tl.store(taps + j, tl.load(taps + j + 1, mask=ok, other=0.0), mask=ok)
    if K > 1:
        tl.store(taps + (K - 2), xv.to(state.dtype.element_ty), mask=ok)
    if HAS_BIAS:
        acc += tl.load(bias + cols, mask=ok, other=0.0).to(tl.float32)
    # conv output rounds to x's dtype, then SiLU (as F.silu on that tensor)
    acc = acc.to(y.dtype.element_ty).to(tl.float32)
    tl.store(y + row * y_stride + cols, (acc * tl.sigmoid(acc)).to(y.dtype.element_ty), mask=ok)


def conv_silu_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   state: torch.Tensor) -> torch.Tensor:
    B, C = x.shape
    K = weight.shape[-1]
    if x.stride(-1) != 1 or state.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError("conv_silu_step (triton): x, state and weight need unit-stride last dims")
    y = torch.empty(B, C, dtype=x.dtype, device=x.device)
    BLOCK = min(128, triton.next_power_of_2(C))
    _conv_silu_step_kernel[(B, triton.cdiv(C, BLOCK))](
        x, weight, bias if bias is not None else weight, state, y, C, x.stride(0), state.stride(0), state.stride(1),
        y.stride(0), K=K, HAS_BIAS=bias is not None, BLOCK=BLOCK, num_warps=4)
    return y


# --- DDTS: gates, tempering, key norm, channel gate, state update, readout, D skip, output gate ------------------


@triton.jit
def _ddts_step_kernel(
    q, k, gates, x, hidden, up_w, up_b, x_conv, z, skip, state, u,
    scale, key_eps, E,
    q_stride, k_stride, g_stride, x_stride, h_stride, xc_stride, z_stride, u_stride,
    M: tl.constexpr, BM: tl.constexpr, R: tl.constexpr, BR: tl.constexpr, BE: tl.constexpr,
):
    """Grid (B, cdiv(e, BE)): each program owns all m state rows of BE columns (read once, written once)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BE + tl.arange(0, BE)
    ok = cols < E
    mi = tl.arange(0, BM)
    m_ok = mi < M

    # selection g = softplus(g_hat), temperature tau = sigmoid(t_hat); every program recomputes the m gates
    g_hat = tl.load(gates + row * g_stride + mi, mask=m_ok, other=0.0).to(tl.float32)
    t_hat = tl.load(gates + row * g_stride + M + mi, mask=m_ok, other=0.0).to(tl.float32)
    g = tl.where(g_hat > 20.0, g_hat, _log1p(tl.exp(tl.minimum(g_hat, 20.0))))
    tau = tl.sigmoid(t_hat)
    log_decay = -tau * g
    input_gate = tl.where(tau == 0.0, 1.0, tl.exp(tau * tl.log(g)))
    k32 = tl.load(k + row * k_stride + mi, mask=m_ok, other=0.0).to(tl.float32)
    k_norm = tl.maximum(tl.sqrt(tl.sum(k32 * k32, axis=0)), key_eps)
    k_gated = k32 / k_norm * input_gate
    k_gated = tl.where(m_ok, k_gated, 0.0)
    q32 = tl.load(q + row * q_stride + mi, mask=m_ok, other=0.0).to(tl.float32)

    # v = sigmoid(up(hidden)) * x, rounded to the model dtype at the same points as the sequence path
    xv = tl.load(x + row * x_stride + cols, mask=ok, other=0.0)
    ri = tl.arange(0, BR)
    r_ok = ri < R
    hid = tl.load(hidden + row * h_stride + ri, mask=r_ok, other=0.0).to(tl.float32)
    w_up = tl.load(up_w + cols[:, None] * R + ri[None, :], mask=ok[:, None] & r_ok[None, :], other=0.0)
    pre = tl.sum(w_up.to(tl.float32) * hid[None, :], axis=1) + tl.load(up_b + cols, mask=ok, other=0.0).to(tl.float32)
    pre = pre.to(xv.dtype).to(tl.float32)
    sig = tl.sigmoid(pre).to(xv.dtype).to(tl.float32)
    v = (sig * xv.to(tl.float32)).to(xv.dtype).to(tl.float32)

    # S' = diag(exp(log_decay)) S + k_gated^T v ; o = scale * q S'
    offs = row * M * E + mi[:, None] * E + cols[None, :]
    s_mask = m_ok[:, None] & ok[None, :]
    S = tl.load(state + offs, mask=s_mask, other=0.0)
    S = S * tl.exp(log_decay)[:, None] + k_gated[:, None] * v[None, :]
    tl.store(state + offs, S, mask=s_mask)
    o = tl.sum(S * q32[:, None], axis=0) * scale

    xc = tl.load(x_conv + row * xc_stride + cols, mask=ok, other=0.0).to(tl.float32)
    zz = tl.load(z + row * z_stride + cols, mask=ok, other=0.0).to(tl.float32)
    d = tl.load(skip + cols, mask=ok, other=0.0).to(tl.float32)
    out = (o + d * xc) * (zz * tl.sigmoid(zz))
    tl.store(u + row * u_stride + cols, out, mask=ok)


def ddts_step(q, k, gates, x, gate_hidden, up_weight, up_bias, x_conv, z, skip, state, scale, key_eps):
    B, M = q.shape
    E = x.shape[-1]
    R = gate_hidden.shape[-1]
    if state.shape != (B, M, E) or not state.is_contiguous() or state.dtype != torch.float32:
        raise ValueError(f"ddts_step (triton): state must be contiguous float32 [B, m, e] = {(B, M, E)}")
    for name, t in (("q", q), ("k", k), ("gates", gates), ("x", x), ("gate_hidden", gate_hidden),
                    ("x_conv", x_conv), ("z", z)):
        if t.stride(-1) != 1:
            raise ValueError(f"ddts_step (triton): {name} needs a unit-stride last dim")
    u = torch.empty(B, E, dtype=torch.float32, device=x.device)
    BE = 32
    _ddts_step_kernel[(B, triton.cdiv(E, BE))](
        q, k, gates, x, gate_hidden, up_weight.contiguous(), up_bias, x_conv, z, skip, state, u,
        scale, key_eps, E,
        q.stride(0), k.stride(0), gates.stride(0), x.stride(0), gate_hidden.stride(0), x_conv.stride(0), z.stride(0),
        u.stride(0),
        M=M, BM=max(triton.next_power_of_2(M), 16), R=R, BR=max(triton.next_power_of_2(R), 16), BE=BE, num_warps=4)
    return u


# --- the DDTS mixer's small projections, one launch ------------------------------------------------------------


@triton.jit
def _gemv_rows(w, vec, r0, E, ROWS: tl.constexpr, BK: tl.constexpr):
    """float32 dot products of weight rows r0 .. r0 + ROWS (row-major, E columns) with one input vector."""
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, BK)
    acc = tl.zeros([ROWS], dtype=tl.float32)
    for k0 in range(0, E, BK):
        ok = k0 + cols < E
        v = tl.load(vec + k0 + cols, mask=ok, other=0.0).to(tl.float32)
        wt = tl.load(w + (r0 + rows)[:, None] * E + k0 + cols[None, :], mask=ok[None, :], other=0.0)
        acc += tl.sum(wt.to(tl.float32) * v[None, :], axis=1)
    return acc


@triton.jit
def _ddts_project_kernel(
    x_conv, x, qk_w, gate_w, gate_b, hid_w, qk_out, gate_out, hid_out, E,
    xc_stride, x_stride, qk_stride, g_stride, h_stride,
    M2: tl.constexpr, R: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr,
):
    """Grid (B, (2 * M2 + R) / ROWS): each program owns ROWS output rows of one of the three matrices
    (qk: M2 rows on x_conv, gates: M2 rows on x_conv with a bias, hidden: R rows on x) and reads them once."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    rows = tl.arange(0, ROWS)
    if blk < M2 // ROWS:
        r0 = blk * ROWS
        acc = _gemv_rows(qk_w, x_conv + b * xc_stride, r0, E, ROWS, BK)
        tl.store(qk_out + b * qk_stride + r0 + rows, acc.to(qk_out.dtype.element_ty))
    elif blk < 2 * (M2 // ROWS):
        r0 = blk * ROWS - M2
        acc = _gemv_rows(gate_w, x_conv + b * xc_stride, r0, E, ROWS, BK) + tl.load(gate_b + r0 + rows).to(tl.float32)
        tl.store(gate_out + b * g_stride + r0 + rows, acc)
    else:
        r0 = blk * ROWS - 2 * M2
        acc = _gemv_rows(hid_w, x + b * x_stride, r0, E, ROWS, BK)
        tl.store(hid_out + b * h_stride + r0 + rows, acc.to(hid_out.dtype.element_ty))


PROJECT_ROWS = 4


def ddts_project_supported(x: torch.Tensor, qk_weight: torch.Tensor, hidden_weight: torch.Tensor) -> bool:
    """One program per 4 output rows beats cuBLAS's split-K GEMV chain at small batches; large batches keep cuBLAS."""
    return x.shape[0] <= 8 and qk_weight.shape[0] % PROJECT_ROWS == 0 and hidden_weight.shape[0] % PROJECT_ROWS == 0


def ddts_project(x_conv, x, qk_weight, gate_weight, gate_bias, hidden_weight):
    B, E = x.shape
    M2, R = qk_weight.shape[0], hidden_weight.shape[0]
    for name, t in (("x_conv", x_conv), ("x", x)):
        if t.stride(-1) != 1:
            raise ValueError(f"ddts_project (triton): {name} needs a unit-stride last dim")
    qk = torch.empty(B, M2, dtype=x_conv.dtype, device=x.device)
    gates = torch.empty(B, M2, dtype=torch.float32, device=x.device)
    hidden = torch.empty(B, R, dtype=x.dtype, device=x.device)
    _ddts_project_kernel[(B, (2 * M2 + R) // PROJECT_ROWS)](
        x_conv, x, qk_weight.contiguous(), gate_weight.contiguous(), gate_bias, hidden_weight.contiguous(),
        qk, gates, hidden, E, x_conv.stride(0), x.stride(0), qk.stride(0), gates.stride(0), hidden.stride(0),
        M2=M2, R=R, ROWS=PROJECT_ROWS, BK=min(1024, triton.next_power_of_2(E)), num_warps=4)
    return qk, gates, hidden


# --- SW-SKA: RoPE, attention over the ring and the current token, ring write --------------------------------------


@triton.jit
def _rope_half(ptr, inv_freq, pos, HALF: tl.constexpr):
    """Load one [D] head vector and rotate it (rotate-half layout, ops/rope.py), rounded to its dtype."""
    j = tl.arange(0, HALF)
    a = tl.load(ptr + j)
    b = tl.load(ptr + HALF + j)
    angle = pos * tl.load(inv_freq + j)
    c = tl.cos(angle)
    s = tl.sin(angle)
    a32 = a.to(tl.float32)
    b32 = b.to(tl.float32)
    ra = (a32 * c - b32 * s).to(a.dtype).to(tl.float32)
    rb = (b32 * c + a32 * s).to(a.dtype).to(tl.float32)
    return ra, rb


@triton.jit
def _window_split_kernel(
    q, key_ring, value_ring, ring_valid, inv_freq, positions, partial,
    scale, S,
    q_stride_b, q_stride_h, kr_stride_b, kr_stride_s, kr_stride_h, vr_stride_b, vr_stride_s, vr_stride_h,
    rv_stride_b, p_stride_b, p_stride_h,
    HEADS_PER_KEY: tl.constexpr, HEADS_PER_VALUE: tl.constexpr, HALF: tl.constexpr, BS: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    """Grid (B, H, n_split): online softmax over BLOCKS * BS ring slots; writes (acc [D], max, sum) per split."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    pos = tl.load(positions + b).to(tl.float32)
    qa, qb = _rope_half(q + b * q_stride_b + h * q_stride_h, inv_freq, pos, HALF)
    hk = h // HEADS_PER_KEY
    hv = h // HEADS_PER_VALUE
    j = tl.arange(0, HALF)
    m_run = tl.full([1], float("-inf"), tl.float32)
    l_run = tl.zeros([1], dtype=tl.float32)
    acc_a = tl.zeros([HALF], dtype=tl.float32)
    acc_b = tl.zeros([HALF], dtype=tl.float32)
    # splits tile [0, n_split * BLOCKS * BS) in whole BS blocks; slots past S are masked
    lo = sp * (BLOCKS * BS)
    for block in tl.static_range(BLOCKS):
        slots = lo + block * BS + tl.arange(0, BS)
        s_ok = slots < S
        kp = key_ring + b * kr_stride_b + slots[:, None] * kr_stride_s + hk * kr_stride_h
        ka = tl.load(kp + j[None, :], mask=s_ok[:, None], other=0.0).to(tl.float32)
        kb = tl.load(kp + HALF + j[None, :], mask=s_ok[:, None], other=0.0).to(tl.float32)
        score = (tl.sum(ka * qa[None, :], axis=1) + tl.sum(kb * qb[None, :], axis=1)) * scale
        valid = tl.load(ring_valid + b * rv_stride_b + slots, mask=s_ok, other=0) != 0
        score = tl.where(valid & s_ok, score, float("-inf"))
        m_new = tl.maximum(m_run, tl.max(score, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_run - m_safe)
        p = tl.exp(score - m_safe)
        vp = value_ring + b * vr_stride_b + slots[:, None] * vr_stride_s + hv * vr_stride_h
        va = tl.load(vp + j[None, :], mask=s_ok[:, None], other=0.0).to(tl.float32)
        vb = tl.load(vp + HALF + j[None, :], mask=s_ok[:, None], other=0.0).to(tl.float32)
        l_run = l_run * alpha + tl.sum(p, axis=0)
        acc_a = acc_a * alpha + tl.sum(p[:, None] * va, axis=0)
        acc_b = acc_b * alpha + tl.sum(p[:, None] * vb, axis=0)
        m_run = m_new
    out = partial + b * p_stride_b + h * p_stride_h + sp * (2 * HALF + 2)
    tl.store(out + j, acc_a)
    tl.store(out + HALF + j, acc_b)
    tl.store(out + 2 * HALF + tl.arange(0, 1), m_run)
    tl.store(out + 2 * HALF + 1 + tl.arange(0, 1), l_run)


@triton.jit
def _window_combine_kernel(
    q, k, v, key_ring, value_ring, ring_valid, inv_freq, positions, partial, valid_now, slot, out,
    scale, n_split,
    q_stride_b, q_stride_h, k_stride_b, k_stride_h, v_stride_b, v_stride_h,
    kr_stride_b, kr_stride_s, kr_stride_h, vr_stride_b, vr_stride_s, vr_stride_h, rv_stride_b,
    p_stride_b, p_stride_h, o_stride_b, o_stride_h,
    HEADS_PER_KEY: tl.constexpr, HEADS_PER_VALUE: tl.constexpr, HALF: tl.constexpr, BSPLIT: tl.constexpr,
):
    """Grid (B, H): merge the splits with the current token, write the output, then the token into its slot."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    hk = h // HEADS_PER_KEY
    hv = h // HEADS_PER_VALUE
    pos = tl.load(positions + b).to(tl.float32)
    qa, qb = _rope_half(q + b * q_stride_b + h * q_stride_h, inv_freq, pos, HALF)
    ka, kb = _rope_half(k + b * k_stride_b + hk * k_stride_h, inv_freq, pos, HALF)
    j = tl.arange(0, HALF)
    va = tl.load(v + b * v_stride_b + hv * v_stride_h + j)
    vb = tl.load(v + b * v_stride_b + hv * v_stride_h + HALF + j)
    now_ok = tl.load(valid_now + b) != 0
    s_self = (tl.sum(ka * qa, axis=0) + tl.sum(kb * qb, axis=0)) * scale
    s_self = tl.where(now_ok, s_self, float("-inf"))

    si = tl.arange(0, BSPLIT)
    sp_ok = si < n_split
    base = partial + b * p_stride_b + h * p_stride_h + si * (2 * HALF + 2)
    m_sp = tl.load(base + 2 * HALF, mask=sp_ok, other=float("-inf"))
    l_sp = tl.load(base + 2 * HALF + 1, mask=sp_ok, other=0.0)
    m_all = tl.maximum(tl.max(m_sp, axis=0), s_self)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    w_sp = tl.where(sp_ok, tl.exp(m_sp - m_safe), 0.0)
    w_self = tl.exp(s_self - m_safe)
    acc_a = tl.load(base[:, None] + j[None, :], mask=sp_ok[:, None], other=0.0)
    acc_b = tl.load(base[:, None] + HALF + j[None, :], mask=sp_ok[:, None], other=0.0)
    total = tl.sum(l_sp * w_sp, axis=0) + w_self
    num_a = tl.sum(acc_a * w_sp[:, None], axis=0) + w_self * va.to(tl.float32)
    num_b = tl.sum(acc_b * w_sp[:, None], axis=0) + w_self * vb.to(tl.float32)
    inv = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)  # nothing visible: zeros
    o = out + b * o_stride_b + h * o_stride_h
    tl.store(o + j, (num_a * inv).to(out.dtype.element_ty))
    tl.store(o + HALF + j, (num_b * inv).to(out.dtype.element_ty))

    # every split program has read the slot by now (earlier launch): overwrite it with the current token
    s = tl.load(slot)
    if h % HEADS_PER_KEY == 0:
        kp = key_ring + b * kr_stride_b + s * kr_stride_s + hk * kr_stride_h
        tl.store(kp + j, ka.to(key_ring.dtype.element_ty))
        tl.store(kp + HALF + j, kb.to(key_ring.dtype.element_ty))
    if h % HEADS_PER_VALUE == 0:
        vp = value_ring + b * vr_stride_b + s * vr_stride_s + hv * vr_stride_h
        tl.store(vp + j, va.to(value_ring.dtype.element_ty))
        tl.store(vp + HALF + j, vb.to(value_ring.dtype.element_ty))
    if h == 0:
        tl.store(ring_valid + b * rv_stride_b + s, now_ok.to(tl.int8))


def window_step_supported(q: torch.Tensor, inv_freq: torch.Tensor) -> bool:
    """The fused kernel rotates the whole head (R = D, a power of two >= 32)."""
    D = q.shape[-1]
    return 2 * inv_freq.numel() == D and D >= 32 and (D & (D - 1)) == 0


def window_step(q, k, v, inv_freq, positions, key_ring, value_ring, ring_valid, slot, valid, scale=None):
    B, H, D = q.shape
    S, Hk, Hv = key_ring.shape[1], key_ring.shape[2], value_ring.shape[2]
    if not window_step_supported(q, inv_freq):
        raise ValueError(f"window_step (triton): needs a full rotation of a power-of-two head dim; got D={D}, "
                         f"R={2 * inv_freq.numel()}")
    for name, t in (("q", q), ("k", k), ("v", v), ("key_ring", key_ring), ("value_ring", value_ring)):
        if t.stride(-1) != 1:
            raise ValueError(f"window_step (triton): {name} needs a unit-stride last dim")
    scale = D**-0.5 if scale is None else scale
    BS = 64
    # one BS-slot block per program keeps many loads in flight at batch 1; large batches group up to 8 blocks
    n_split = max(1, min(triton.cdiv(S, BS), triton.cdiv(8192, B * H)), triton.cdiv(S, 8 * BS))
    slots_per_split = triton.cdiv(triton.cdiv(S, n_split), BS) * BS
    n_split = triton.cdiv(S, slots_per_split)
    partial = torch.empty(B, H, n_split, D + 2, dtype=torch.float32, device=q.device)
    valid_bytes = ring_valid.view(torch.int8)
    pos = positions.contiguous()
    _window_split_kernel[(B, H, n_split)](
        q, key_ring, value_ring, valid_bytes, inv_freq, pos, partial,
        scale, S,
        q.stride(0), q.stride(1), key_ring.stride(0), key_ring.stride(1), key_ring.stride(2),
        value_ring.stride(0), value_ring.stride(1), value_ring.stride(2), valid_bytes.stride(0),
        partial.stride(0), partial.stride(1),
        HEADS_PER_KEY=H // Hk, HEADS_PER_VALUE=H // Hv, HALF=D // 2, BS=BS, BLOCKS=slots_per_split // BS,
        num_warps=4)
    out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    _window_combine_kernel[(B, H)](
        q, k, v, key_ring, value_ring, valid_bytes, inv_freq, pos, partial, valid.view(torch.int8), slot, out,
        scale, n_split,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        key_ring.stride(0), key_ring.stride(1), key_ring.stride(2),
        value_ring.stride(0), value_ring.stride(1), value_ring.stride(2), valid_bytes.stride(0),
        partial.stride(0), partial.stride(1), out.stride(0), out.stride(1),
        HEADS_PER_KEY=H // Hk, HEADS_PER_VALUE=H // Hv, HALF=D // 2,
        BSPLIT=max(triton.next_power_of_2(n_split), 2), num_warps=4)
    return out
