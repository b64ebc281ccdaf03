"""KL divergence from a teacher's next-token distribution to a student's, from their last hidden states and LM
heads, without ever holding [tokens, vocab] logits for more than one chunk.

legend: N tokens (batch x time, flattened), d / dt hidden widths, V vocabulary, C chunk

    KL_n = sum_v p_t(v) (log p_t(v) - log p_s(v)),  p_s = softmax(h_s W_s^T), p_t = softmax(h_t W_t^T)
    loss = mean of KL_n over the tokens with mask[n] (all when mask is None)

`linear_kl_reference` materialises the logits (the spec); `linear_kl` runs the same arithmetic per chunk of C tokens
under activation checkpointing, so the backward recomputes each chunk's logits instead of storing them. The
softmaxes run in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _kl_sum(h_student, w_student, h_teacher, w_teacher, mask) -> torch.Tensor:
    acc = torch.float64 if h_student.dtype == torch.float64 else torch.float32
    log_p = (h_student @ w_student.t()).to(acc).log_softmax(-1)
    log_q = (h_teacher @ w_teacher.t()).to(acc).log_softmax(-1)
    per_token = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (per_token * mask).sum() if mask is not None else per_token.sum()


def linear_kl_reference(h_student: torch.Tensor, w_student: torch.Tensor, h_teacher: torch.Tensor,
                        w_teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spec: h_* [..., d], w_* [V, d], mask [...] bool -> [] mean KL(teacher || student) per counted token."""
    hs, ht = h_student.reshape(-1, h_student.shape[-1]), h_teacher.reshape(-1, h_teacher.shape[-1])
    m = None if mask is None else mask.reshape(-1).to(torch.float64 if hs.dtype == torch.float64 else torch.float32)
    count = hs.shape[0] if m is None else m.sum().clamp_min(1)
    return _kl_sum(hs, w_student, ht, w_teacher, m) / count


def linear_kl(h_student: torch.Tensor, w_student: torch.Tensor, h_teacher: torch.Tensor, w_teacher: torch.Tensor,
              mask: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """Chunked `linear_kl_reference`: peak memory about 3 x C x V floats instead of 3 x N x V.

    Args:
        h_student: [..., d] student hidden states (requires grad).  w_student: [V, d] its LM head.
        h_teacher: [..., dt] teacher hidden states (no grad needed).  w_teacher: [V, dt].
        mask: [...] bool, True for tokens that count (e.g. targets != -100), or None for all.
        chunk: tokens per chunk.
    Returns:
        [] float32 (float64 for float64 inputs): mean KL(teacher || student) per counted token.
    """
    if chunk < 1:
        raise ValueError(f"linear_kl: chunk must be >= 1; got {chunk}")
    if h_student.shape[:-1] != h_teacher.shape[:-1] or w_student.shape[0] != w_teacher.shape[0]:
        raise ValueError(f"linear_kl: student and teacher must score the same tokens over the same vocabulary; got "
                         f"{tuple(h_student.shape)} / {tuple(w_student.shape)} and {tuple(h_teacher.shape)} / "
                         f"{tuple(w_teacher.shape)}")
    hs, ht = h_student.reshape(-1, h_student.shape[-1]), h_teacher.reshape(-1, h_teacher.shape[-1])
    acc = torch.float64 if hs.dtype == torch.float64 else torch.float32
    m = None if mask is None else mask.reshape(-1).to(acc)
    total = hs.new_zeros((), dtype=acc)
    for start in range(0, hs.shape[0], chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_kl_sum, hs[part], w_student, ht[part], w_teacher,
                                   None if m is None else m[part], use_reentrant=False)
    count = hs.shape[0] if m is None else m.sum().clamp_min(1)
    return total / count
