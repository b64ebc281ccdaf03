"""Distillation loss from LM heads: next-token cross-entropy plus KL(teacher || student), from the last hidden states,
without ever holding [tokens, vocab] logits for more than one chunk of tokens, and with each logit matmul run once.

legend: N tokens (batch x time, flattened), d / dt hidden widths, V vocabulary, C chunk of tokens

    p_s = softmax(h_s W_s^T),  p_t = softmax(h_t W_t^T)
    CE_n = -log p_s(y_n),      KL_n = sum_v p_t(v) (log p_t(v) - log p_s(v))
    loss = mean_n CE_n + kl_weight * mean_n KL_n,   both means over the tokens whose label is not ignored

`linear_distill_reference` is the spec (the project's cross-entropy spec plus `linear_kl_reference`, materialised
logits). `linear_distill` computes the same loss per chunk of C tokens and, in the same pass, its gradient, because
d loss / d logits_s = (1/n + kl_weight/n) p_s - onehot(y)/n - (kl_weight/n) p_t is known once both softmaxes are:

    per chunk:  s = h_s W_s^T,  t = h_t W_t^T                      (the only two logit matmuls)
                g = a p_s - b p_t - a_ce onehot(y)                  (float32 row-wise work on [C, V])
                dh_s[chunk] = g W_s,  dW_s += g^T h_s              (two gradient matmuls, float32 accumulation)
    backward:   dh_s, dW_s times the upstream scalar

Against cross-entropy and KL taken apart with recomputing backwards (ops/cross_entropy, checkpointed KL chunks:
ten [N, V] x d matmuls per step), this runs four, and each softmax once. The teacher side gets no gradient. The
softmaxes run in float32 (float64 for float64 inputs); the matmuls in the autocast dtype, as F.linear would.
"""
from __future__ import annotations

import torch

from .cross_entropy import linear_cross_entropy_reference, logits_dtype
from .rows import mm_float32


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


def linear_distill_reference(h_student: torch.Tensor, w_student: torch.Tensor, labels: torch.Tensor,
                             h_teacher: torch.Tensor, w_teacher: torch.Tensor, kl_weight: float,
                             ignore_index: int = -100) -> torch.Tensor:
    """Spec: cross-entropy (NaN when every label is ignored, as F.cross_entropy) + kl_weight x KL, both over the
    tokens whose label is not `ignore_index`."""
    ce = linear_cross_entropy_reference(h_student, w_student, labels, ignore_index)
    return ce + kl_weight * linear_kl_reference(h_student, w_student, h_teacher, w_teacher, labels != ignore_index)


class _LinearDistill(torch.autograd.Function):
    """h [N, d], w [V, d], labels [N], h_teacher [N, dt], w_teacher [V, dt] -> [] loss; gradients for h and w only."""

    @staticmethod
    def forward(ctx, h, w, labels, h_teacher, w_teacher, kl_weight, ignore_index, compute_dtype, chunk):
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(compute_dtype), w.to(compute_dtype)
            htc, wtc = h_teacher.to(compute_dtype), w_teacher.to(compute_dtype)
            valid = labels != ignore_index
            n_valid = valid.sum()
            # per-token weights of the two means; KL's count is clamped at 1 as in linear_kl_reference
            ce_weight = torch.where(valid, 1.0 / n_valid.to(acc), 0.0).to(acc)
            kl_scale = torch.where(valid, kl_weight / n_valid.clamp_min(1).to(acc), 0.0).to(acc)
            targets = torch.where(valid, labels, 0)[:, None]
            ce_sum = h.new_zeros((), dtype=acc)
            kl_sum = h.new_zeros((), dtype=acc)
            dh = torch.empty(h.shape, dtype=acc, device=h.device)
            dw = torch.zeros(w.shape, dtype=acc, device=w.device)
            for n0 in range(0, h.shape[0], chunk):
                part = slice(n0, n0 + chunk)
                log_ps = (hc[part] @ wc.t()).to(acc).log_softmax(-1)
                log_pt = (htc[part] @ wtc.t()).to(acc).log_softmax(-1)
                p_t = log_pt.exp()
                on = valid[part].to(acc)
                kl_sum += ((p_t * (log_pt - log_ps)).sum(-1) * on).sum()
                ce_sum -= (log_ps.gather(1, targets[part])[:, 0] * on).sum()
                a, b = ce_weight[part] + kl_scale[part], kl_scale[part]
                grad = log_ps.exp_().mul_(a[:, None]).sub_(p_t.mul_(b[:, None]))
                grad.scatter_add_(1, targets[part], -ce_weight[part][:, None])
                grad = grad.to(compute_dtype)
                dh[part] = mm_float32(grad, wc)
                dw += mm_float32(grad.t(), hc[part])
            loss = ce_sum / n_valid + kl_weight * kl_sum / n_valid.clamp_min(1)
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (h.dtype, w.dtype)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (dh * dloss).to(h_dtype), (dw * dloss).to(w_dtype), None, None, None, None, None, None, None


def linear_distill(h_student: torch.Tensor, w_student: torch.Tensor, labels: torch.Tensor, h_teacher: torch.Tensor,
                   w_teacher: torch.Tensor, kl_weight: float, chunk: int = 1024,
                   ignore_index: int = -100) -> torch.Tensor:
    """Fused `linear_distill_reference`: peak memory about 4 x C x V floats, two logit matmuls forward and two
    gradient matmuls, none in the backward.

    Args:
        h_student: [..., d] student hidden states.  w_student: [V, d] its LM head (tied embeddings: the same tensor).
        labels: [...] int64 next-token targets aligned with h_student; `ignore_index` = not counted.
        h_teacher: [..., dt] teacher hidden states (treated as constants).  w_teacher: [V, dt].
        kl_weight: the KL term's factor (0 still counts the teacher's logits; use linear_cross_entropy then).
        chunk: tokens per chunk.
    Returns:
        [] float32 (float64 for float64 inputs).
    Example:
        >>> loss = linear_distill(h, student.lm_head.weight, targets, teacher_h, teacher.lm_head.weight, 1.0, 4096)
    """
    if chunk < 1:
        raise ValueError(f"linear_distill: chunk must be >= 1; got {chunk}")
    if h_student.shape[:-1] != h_teacher.shape[:-1] or w_student.shape[0] != w_teacher.shape[0]:
        raise ValueError(f"linear_distill: student and teacher must score the same tokens over the same vocabulary; "
                         f"got {tuple(h_student.shape)} / {tuple(w_student.shape)} and {tuple(h_teacher.shape)} / "
                         f"{tuple(w_teacher.shape)}")
    if labels.shape != h_student.shape[:-1]:
        raise ValueError(f"linear_distill: labels must be h's leading shape {tuple(h_student.shape[:-1])}; got "
                         f"{tuple(labels.shape)}")
    hs, ht = h_student.reshape(-1, h_student.shape[-1]), h_teacher.reshape(-1, h_teacher.shape[-1])
    return _LinearDistill.apply(hs, w_student, labels.reshape(-1), ht.detach(), w_teacher.detach(), float(kl_weight),
                                ignore_index, logits_dtype(h_student, w_student), chunk)


__all__ = ["linear_distill", "linear_distill_reference", "linear_kl_reference"]
