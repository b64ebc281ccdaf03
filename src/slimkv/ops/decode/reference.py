"""Spec of the one-token decode steps: plain PyTorch, float64-capable, built from the same ops as the full forward.

legend: B batch, C channels, K conv taps, d width, e DDTS inner width, m memory size, r channel-gate rank,
        H heads, D head dim, S ring slots

Every function updates its state tensors IN PLACE (fixed addresses, so a CUDA graph can replay the step) and
returns the new activations. Each one is the T = 1 case of the sequence path in layers/ and must agree with it;
ops/decode/triton.py fuses each into one kernel with the same contract.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..conv import causal_conv1d_step
from ..gla.step import gla_step
from ..rope import apply_rope
from ..rows import mm_float32
from ..window_attn import window_decode


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def conv_silu_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   state: torch.Tensor) -> torch.Tensor:
    """SiLU(causal depthwise conv) of one token. x [B, C]; weight [C, K]; state [B, C, K - 1] (updated)."""
    y, new_state = causal_conv1d_step(x, weight, bias, state)
    state.copy_(new_state)
    return F.silu(y)


def ddts_step(
    q: torch.Tensor,
    k: torch.Tensor,
    gates: torch.Tensor,
    x: torch.Tensor,
    gate_hidden: torch.Tensor,
    up_weight: torch.Tensor,
    up_bias: torch.Tensor,
    x_conv: torch.Tensor,
    z: torch.Tensor,
    skip: torch.Tensor,
    state: torch.Tensor,
    scale: float,
    key_eps: float,
) -> torch.Tensor:
    """Everything of a DDTS mixer step between its projections (layers/ddts.py), for one token.

    Args:
        q, k: [B, m] from qk_proj(x_conv).  gates: [B, 2m] = [g_hat | t_hat], gate_proj(x_conv) in float32.
        x: [B, e] the un-convolved input; gate_hidden: [B, r] = channel_gate[0](x); up_weight [e, r], up_bias [e]
            (channel_gate[1]): v = sigmoid(up(gate_hidden)) * x.
        x_conv: [B, e] SiLU(conv(x)); z: [B, e] the output gate; skip: [e] the D skip weights.
        state: [B, m, e] float32 (float64 for float64 inputs), updated in place.
    Returns:
        u = (scale * q S' + D * x_conv) * SiLU(z): [B, e] float32 (float64), ready for the output RMSNorm.
    """
    acc = _acc(x.dtype)
    m = q.shape[-1]
    g_hat, t_hat = gates.to(acc).split(m, dim=-1)
    g = F.softplus(g_hat)
    tau = torch.sigmoid(t_hat)
    log_decay = -tau * g
    k32 = k.to(acc)
    k_gated = k32 / k32.norm(dim=-1, keepdim=True).clamp_min(key_eps) * g.pow(tau)
    # the channel gate runs in the model dtype, as in the sequence path
    v = torch.sigmoid(F.linear(gate_hidden, up_weight, up_bias)) * x
    o, new_state = gla_step(q.to(acc)[:, None], k_gated[:, None], v.to(acc)[:, None], log_decay[:, None],
                            state[:, None], scale)
    state.copy_(new_state[:, 0])
    u = o[:, 0].to(acc) + skip.to(acc) * x_conv.to(acc)
    return u * F.silu(z.to(acc))


def window_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv_freq: torch.Tensor,
    positions: torch.Tensor,
    key_ring: torch.Tensor,
    value_ring: torch.Tensor,
    ring_valid: torch.Tensor,
    slot: torch.Tensor,
    valid: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """One SW-SKA query token: RoPE, attention over the ring plus itself, then the token written into the ring.

    Args:
        q: [B, H, D]; k: [B, Hk, D]; v: [B, Hv, D] (before RoPE); inv_freq: [R / 2] RoPE frequencies (ops/rope.py).
        positions: [B] long RoPE positions.  key_ring [B, S, Hk, D], value_ring [B, S, Hv, D], ring_valid [B, S]:
            the previous tokens (token n in slot n % S), updated in place at `slot` (a long tensor, [] or [1]).
        valid: [B] bool, False for a padding token (it is stored as invalid and attends to nothing new).
    Returns:
        [B, H, D] in q's dtype. The ring slot being overwritten is attended BEFORE it is replaced.
    """
    acc = _acc(q.dtype)
    angles = positions.to(inv_freq.dtype)[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, R]
    cos, sin = angles.cos().to(acc), angles.sin().to(acc)
    q = apply_rope(q[:, None], cos, sin)[:, 0].to(q.dtype)
    k = apply_rope(k[:, None], cos, sin)[:, 0].to(k.dtype)
    out = window_decode(q, torch.cat([key_ring, k[:, None]], 1), torch.cat([value_ring, v[:, None]], 1),
                        torch.cat([ring_valid, valid[:, None]], 1), scale)
    index = slot.reshape(1)
    key_ring.index_copy_(1, index, k[:, None].to(key_ring.dtype))
    value_ring.index_copy_(1, index, v[:, None].to(value_ring.dtype))
    ring_valid.index_copy_(1, index, valid[:, None])
    return out


def ddts_project(x_conv: torch.Tensor, x: torch.Tensor, qk_weight: torch.Tensor, gate_weight: torch.Tensor,
                 gate_bias: torch.Tensor, hidden_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DDTS mixer's three small projections of one token (layers/ddts.py): [q | k] = qk_proj(x_conv) in the
    model dtype, [g^ | t^] = gate_proj(x_conv) in float32, and the channel gate's first (low-rank) layer of x.

    x_conv, x: [B, e]; qk_weight, gate_weight [2m, e]; gate_bias [2m]; hidden_weight [r, e].
    Returns qk [B, 2m] (model dtype), gates [B, 2m] (float32; float64 for float64), hidden [B, r] (model dtype)."""
    qk = F.linear(x_conv, qk_weight)
    # half inputs times half weights, accumulated and returned in float32: no float32 copy of the weights per token
    gates = mm_float32(x_conv, gate_weight.t()) + gate_bias.to(_acc(x.dtype))
    return qk, gates, F.linear(x, hidden_weight)
