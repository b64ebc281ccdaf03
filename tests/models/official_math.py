"""An independent float64 reference of the OFFICIAL Rodimus / Rodimus+ forward, written from
docs/rodimus.md sections 1-3 and operating directly on the official state dict and config.json.

Deliberately shares no code with slimkv: plain loops, explicit formulas.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x, positions, base):
    # x [T, ..., D]: rotate-half (GPT-NeoX) over the full head dim
    D = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = positions.double()[:, None] * inv[None]  # [T, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    shape = [x.shape[0]] + [1] * (x.dim() - 2) + [D]
    cos, sin = cos.view(shape), sin.view(shape)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _rodimus_block(sd, p, h, cfg):
    mix = cfg["mixer_cfg"]
    d = cfg["d_model"]
    e = _align8(int(d * mix.get("expand_ratio", 2)))
    m = mix.get("mem_size", 64)
    eps_n = mix.get("normalize_epsilon", 1e-12)
    T = h.shape[0]
    xz = h @ sd[p + "mixer.fc.weight"].T
    x, z = xz[:, :e], xz[:, e:]
    w = sd[p + "mixer.inner_mixer.short_conv.conv1d.weight"][:, 0, :]  # [e, K]
    b = sd[p + "mixer.inner_mixer.short_conv.conv1d.bias"]
    K = w.shape[1]
    xc = torch.zeros_like(x)
    for t in range(T):
        acc = b.clone()
        for j in range(K):
            src = t - (K - 1) + j
            if src >= 0:
                acc = acc + w[:, j] * x[src]
        xc[t] = acc
    xc = F.silu(xc)
    qk = xc @ sd[p + "mixer.inner_mixer.in_proj.weight"].T
    q, k = qk[:, :m], qk[:, m:]
    gt = xc @ sd[p + "mixer.inner_mixer.mem_gate_proj.weight"].T + sd[p + "mixer.inner_mixer.mem_gate_proj.bias"]
    g = F.softplus(gt[:, :m])
    tau = torch.sigmoid(gt[:, m:])
    alpha = torch.exp(-tau * g)
    a_in = g**tau
    k_hat = k / torch.clamp(k.norm(dim=-1, keepdim=True), min=eps_n)
    low = x @ sd[p + "mixer.inner_mixer.ch_gate_proj.0.weight"].T
    beta = torch.sigmoid(low @ sd[p + "mixer.inner_mixer.ch_gate_proj.1.weight"].T
                         + sd[p + "mixer.inner_mixer.ch_gate_proj.1.bias"])
    v = beta * x
    S = torch.zeros(m, e, dtype=torch.float64)
    o = torch.zeros(T, e, dtype=torch.float64)
    for t in range(T):
        S = alpha[t][:, None] * S + torch.outer(a_in[t] * k_hat[t], v[t])
        o[t] = (q[t] @ S) / math.sqrt(m)
    o = o + sd[p + "mixer.inner_mixer.residual_weight"] * xc
    y = _rms(o * F.silu(z), sd[p + "mixer.act_norm.weight"], cfg.get("norm_epsilon", 1e-5))
    return y @ sd[p + "mixer.out_proj.weight"].T


def _swska(sd, p, h, cfg):
    att = cfg["attn_cfg"]
    H = att["num_heads"]
    T, d = h.shape
    hd = d // H
    half = att["window_size"] // 2
    base = att.get("rotary_emb_base", 10000.0) or 10000.0
    q = (h @ sd[p + "attn.q_proj.weight"].T).view(T, H, hd)
    k = h @ sd[p + "attn.k_proj.weight"].T  # [T, hd]: one shared key head
    v = (h @ sd[p + "attn.v_proj.weight"].T).view(T, H, hd)
    pos = torch.arange(T)
    q, k = _rope(q, pos, base), _rope(k, pos, base)
    out = torch.zeros(T, H, hd, dtype=torch.float64)
    for i in range(T):
        lo = max(0, i - half)
        scores = torch.einsum("hd,jd->hj", q[i], k[lo : i + 1]) / math.sqrt(hd)
        wts = torch.softmax(scores, dim=-1)
        out[i] = torch.einsum("hj,jhd->hd", wts, v[lo : i + 1])
    return out.reshape(T, d) @ sd[p + "attn.out_proj.weight"].T


def _ffn(sd, p, h, cfg):
    f = sd[p + "ffn.out_proj.weight"].shape[1]
    uv = h @ sd[p + "ffn.fc.weight"].T
    return (F.silu(uv[:, f:]) * uv[:, :f]) @ sd[p + "ffn.out_proj.weight"].T


def official_logits(state_dict: dict, cfg: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [T] -> logits [T, V] in float64, following the official equations."""
    sd = {k: v.double() for k, v in state_dict.items()}
    eps = cfg.get("norm_epsilon", 1e-5)
    X = sd["model.embeddings.weight"][input_ids]
    for i in range(cfg["n_layer"]):
        p = f"model.layers.{i}."
        X = X + _rodimus_block(sd, p, _rms(X, sd[p + "mixer_norm.weight"], eps), cfg)
        if cfg["block_type"] == "rodimus_plus":
            A = _swska(sd, p, _rms(X, sd[p + "attn_norm.weight"], eps), cfg)
            X = X + _ffn(sd, p, _rms(X + A, sd[p + "ffn_norm.weight"], eps), cfg)
    X = _rms(X, sd["model.norm_f.weight"], eps)
    head = sd["lm_head.weight"] if "lm_head.weight" in sd and not cfg.get("tie_word_embeddings", True) \
        else sd["model.embeddings.weight"]
    return X @ head.T
