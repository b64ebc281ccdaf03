"""Cross-entropy of a linear head without the full logits: loss = CE(h W^T, labels), chunked over the vocabulary.

legend: N tokens (every leading dim flattened), d model width, V vocabulary, Vc vocabulary chunk

The spec (`linear_cross_entropy_reference`) is what models/modeling.py computes: logits = h W^T in the matmul dtype
(bf16 under autocast), cast to float32, F.cross_entropy with ignore_index, mean over the labels that are not ignored
(NaN when every label is). At a 126k vocabulary and 16k tokens its float32 logits alone are 8 GB, plus their
gradient; the chunked paths never hold more than one [N, Vc] chunk of logits in the matmul dtype:

    forward:   for each vocabulary chunk c:  l = h W_c^T;  lse <- logaddexp(lse, logsumexp(l));  pick l[label]
               loss = sum_valid (lse - l[label]) / n_valid                     (autograd keeps h, lse: [N] floats)
    backward:  for each chunk again:  l = h W_c^T  (recomputed);  dl = (exp(l - lse) - onehot) * dloss / n_valid
               dW_c = dl^T h  (written once, no accumulation over chunks);  dh += dl W_c  (float32, [N, d])

The matmuls stay in cuBLAS. Backends: "torch" (the spec), "chunked" (the above with torch elementwise ops; runs
anywhere), "triton" (the above with two Triton kernels for the row-wise parts: an online logsumexp over each chunk,
and the softmax gradient written in place over the chunk's logits, ops/cross_entropy/triton.py); "auto" = triton on
CUDA, torch elsewhere. No host sync anywhere (n_valid stays on the device). Labels must lie in [0, V) or equal
ignore_index; the chunked paths do not check (that would need a sync), an out-of-range label just counts lse.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..dispatch import resolve_backend
from ..rows import mm_float32, upcast

BACKENDS = ("auto", "torch", "chunked", "triton")
GPU_MODULE = "slimkv.ops.cross_entropy.triton"
# logits elements per chunk (N * Vc): 256 Mi, i.e. 512 MiB of bf16 logits at a time
CHUNK_ELEMENTS = 1 << 28


def linear_cross_entropy_reference(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   ignore_index: int = -100) -> torch.Tensor:
    """Spec: full logits in the matmul dtype, then float32 cross-entropy (models/modeling.py; float64 stays
    float64)."""
    logits = F.linear(h, weight)
    return F.cross_entropy(upcast(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index)


def vocab_chunk(num_tokens: int, vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Vocabulary columns per chunk: about chunk_elements / N, a multiple of 128 (whole matmul tiles)."""
    cols = max(128, chunk_elements // max(num_tokens, 1)) // 128 * 128
    return min(vocab, cols)


def _torch_chunk_forward(logits, labels, lse, picked, v0):
    """Online logsumexp and target pick over one chunk, in torch (the chunked backend)."""
    lse.copy_(torch.logaddexp(lse, torch.logsumexp(logits.float(), dim=-1)))
    idx = labels - v0
    inside = (idx >= 0) & (idx < logits.shape[1])
    got = logits.gather(1, idx.clamp(0, logits.shape[1] - 1)[:, None])[:, 0].float()
    picked.add_(torch.where(inside, got, 0.0))


def _torch_chunk_backward(logits, labels, lse, scale, v0):
    """dl = (softmax - onehot) * scale over one chunk, in torch; returns it in the logits' dtype."""
    grad = torch.exp(logits.float() - lse[:, None])
    idx = labels - v0
    inside = (idx >= 0) & (idx < logits.shape[1])
    grad.scatter_add_(1, idx.clamp(0, logits.shape[1] - 1)[:, None], -inside.float()[:, None])
    return (grad * scale[:, None]).to(logits.dtype)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """h [N, d], weight [V, d], labels [N]; `kernels` = (chunk_forward, chunk_backward) for the row-wise parts."""

    @staticmethod
    def forward(ctx, h, weight, labels, ignore_index, compute_dtype, chunk, kernels):
        chunk_forward, _ = kernels
        with torch.autocast(h.device.type, enabled=False):
            hc = h.to(compute_dtype)
            wc = weight.to(compute_dtype)
            N, V = h.shape[0], weight.shape[0]
            lse = torch.full((N,), float("-inf"), dtype=torch.float32, device=h.device)
            picked = torch.zeros(N, dtype=torch.float32, device=h.device)
            for v0 in range(0, V, chunk):
                chunk_forward(hc @ wc[v0 : v0 + chunk].t(), labels, lse, picked, v0)
            valid = labels != ignore_index
            n_valid = valid.sum()
            loss = torch.where(valid, lse - picked, 0.0).sum() / n_valid
        ctx.save_for_backward(hc, weight, labels, lse, n_valid)
        ctx.ignore_index, ctx.chunk, ctx.kernels, ctx.h_dtype = ignore_index, chunk, kernels, h.dtype
        return loss

    @staticmethod
    def backward(ctx, dloss):
        hc, weight, labels, lse, n_valid = ctx.saved_tensors
        _, chunk_backward = ctx.kernels
        with torch.autocast(hc.device.type, enabled=False):
            wc = weight.to(hc.dtype)
            scale = torch.where(labels != ctx.ignore_index, dloss.float() / n_valid, 0.0)
            V = weight.shape[0]
            dh = torch.zeros(hc.shape, dtype=torch.float32, device=hc.device)
            dweight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
            for v0 in range(0, V, ctx.chunk):
                w_c = wc[v0 : v0 + ctx.chunk]
                dl = chunk_backward(hc @ w_c.t(), labels, lse, scale, v0)
                dh += mm_float32(dl, w_c)
                dweight[v0 : v0 + ctx.chunk] = dl.t() @ hc
        return dh.to(ctx.h_dtype), dweight, None, None, None, None, None


def logits_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype F.linear(h, weight) would produce: the autocast dtype inside autocast, else the promoted one."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, weight.dtype)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                         chunk_size: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Mean cross-entropy of logits h W^T against labels, over labels != ignore_index; float32 scalar.

    Args:
        h: [..., d] hidden states (the LM head's input).  weight: [V, d] (the LM head's / tied embedding's weight).
        labels: [...] int64 targets aligned with h (shift them before the call; pad with ignore_index).
        chunk_size: vocabulary columns per chunk (default: about 2^28 logits per chunk, see `vocab_chunk`).
        backend: "auto" (triton on CUDA, torch elsewhere), "torch" (full logits, the spec), "chunked", "triton".
    Example:
        >>> labels = torch.cat([ids[:, 1:], ids.new_full((B, 1), -100)], 1)   # next-token targets, no slicing of h
        >>> loss = linear_cross_entropy(hidden, model.lm_head.weight, labels)
    """
    if weight.dim() != 2 or h.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be [V, d] with d = h's last dim; got "
                         f"{tuple(weight.shape)} for h {tuple(h.shape)}")
    if labels.shape != h.shape[:-1]:
        raise ValueError(f"linear_cross_entropy: labels must be h's leading shape {tuple(h.shape[:-1])}; got "
                         f"{tuple(labels.shape)}")
    chosen = resolve_backend("linear_cross_entropy", backend, BACKENDS, h.device, "triton", GPU_MODULE,
                             cpu_backend="torch")
    if chosen == "torch":
        return linear_cross_entropy_reference(h, weight, labels, ignore_index)
    h2 = h.reshape(-1, h.shape[-1])
    labels = labels.reshape(-1)
    chunk = chunk_size or vocab_chunk(h2.shape[0], weight.shape[0])
    if chosen == "triton":
        from .triton import TRITON_KERNELS as kernels
    else:
        kernels = (_torch_chunk_forward, _torch_chunk_backward)
    return LinearCrossEntropyFunction.apply(h2, weight, labels, ignore_index, logits_dtype(h, weight), chunk,
                                            kernels)


__all__ = ["BACKENDS", "linear_cross_entropy", "linear_cross_entropy_reference", "logits_dtype", "vocab_chunk"]
