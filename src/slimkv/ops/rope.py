"""Rotary position embedding, rotate-half layout (GPT-NeoX, non-interleaved), as SW-SKA uses it.

legend: B batch, T time, H heads, D head dim, R rotary dims (even, R <= D)

Channel j < R/2 pairs with channel j + R/2 and the pair turns by the angle  position * base^(-2j / R):

    out[j]       = x[j] cos - x[j + R/2] sin
    out[j + R/2] = x[j + R/2] cos + x[j] sin

Channels R..D pass through unchanged. Angles are formed in float32 (float64 on request), the same way the official
(flash-attn) and Hugging Face rotary embeddings form them, so released checkpoints see the angles they were trained on.
"""
from __future__ import annotations

import torch


def rope_inv_freq(dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """[R/2] pair frequencies base^(-2j / R), j < R/2: the one definition every RoPE path here uses."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"rope_inv_freq: dim must be a positive even number; got {dim}")
    return 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=dtype) / dim))


def rope_cos_sin(
    positions: torch.Tensor,
    dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    inv_freq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for `apply_rope`.

    Args:
        positions: [B, T] (or [T]) long token positions.
        dim: rotary dims R (even); the head dim for a full rotation.
        base: frequency base.
        dtype: dtype of the tables; angles are computed in float64 when dtype is float64, else float32.
        inv_freq: [R / 2] pair frequencies to use instead of base^(-2j / R): a pretrained model's own table (e.g.
            Llama-3's rescaled frequencies, read from its Hugging Face rotary embedding); R = 2 * len(inv_freq).
    Returns:
        cos, sin: [B, T, R] (or [T, R]) in `dtype`.
    """
    if inv_freq is not None:
        dim = 2 * inv_freq.numel()
    if dim <= 0 or dim % 2:
        raise ValueError(f"rope_cos_sin: dim must be a positive even number; got {dim}")
    if positions.is_floating_point():
        raise ValueError(f"rope_cos_sin: positions must be integer; got {positions.dtype}")
    device = positions.device if device is None else device
    angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if inv_freq is None:
        inv_freq = rope_inv_freq(dim, base, angle_dtype, device)
    inv_freq = inv_freq.to(device=device, dtype=angle_dtype)
    # [..., R/2] -> [..., R]: both halves of a pair share an angle
    angles = positions.to(device=device, dtype=angle_dtype).unsqueeze(-1) * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R channels of every head; R = cos.shape[-1].

    Args:
        x: [B, T, H, D].
        cos, sin: [B, T, R] from `rope_cos_sin` ([T, R] broadcasts over the batch).
    Returns:
        [B, T, H, D] in x's dtype; the rotation runs in float32 (float64 for float64 x).
    """
    R = cos.shape[-1]
    if x.dim() != 4 or R > x.shape[-1] or R % 2 or sin.shape != cos.shape:
        raise ValueError(
            f"apply_rope: x must be [B, T, H, D] with D >= R and cos/sin [.., T, R] (R even); "
            f"got x {tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    # [B, T, 1, R]: one angle per (position, channel), shared by the heads
    cos, sin = cos.to(acc).unsqueeze(-2), sin.to(acc).unsqueeze(-2)
    rotated, passed = x[..., :R].to(acc), x[..., R:]
    first, second = rotated.chunk(2, dim=-1)
    rotated = rotated * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((rotated.to(x.dtype), passed), dim=-1)


def apply_rope_reference(
    x: torch.Tensor, positions: torch.Tensor, rotary_dim: int | None = None, base: float = 10000.0
) -> torch.Tensor:
    """Spec: x [B, T, H, D], positions [B, T] -> [B, T, H, D], in float64 complex arithmetic.

    Channels (j, j + R/2) are the real and imaginary parts of z_j, and z_j is multiplied by exp(i * p * base^(-2j/R)).
    """
    D = x.shape[-1]
    R = D if rotary_dim is None else rotary_dim
    half = R // 2
    out = x.to(torch.float64).clone()
    z = torch.complex(out[..., :half], out[..., half:R])
    theta = torch.tensor([base ** (-2.0 * j / R) for j in range(half)], dtype=torch.float64)
    # [B, T, 1, R/2]
    phase = torch.polar(torch.ones_like(theta), positions.to(torch.float64).unsqueeze(-1) * theta).unsqueeze(-2)
    z = z * phase
    out[..., :half], out[..., half:R] = z.real, z.imag
    return out.to(x.dtype)
