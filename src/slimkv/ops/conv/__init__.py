"""Depthwise causal short convolution with a carried state (the DDTS mixer's conv, kernel 4).

legend: B batch, T time, C channels, K kernel size

    y[t, c] = bias[c] + sum_{j < K} weight[c, j] * x[t - K + 1 + j, c]

with inputs before the sequence start taken from `initial_state` (the previous K - 1 inputs, oldest first), or zeros.
weight[c, K - 1] multiplies the current input: [C, K] is nn.Conv1d(C, C, K, groups=C).weight ([C, 1, K]) squeezed.
No activation inside (the layer applies SiLU). The state is the last K - 1 inputs, ready for `causal_conv1d_step`.

`causal_conv1d_silu` is the DDTS mixer's conv followed by its SiLU as one op: backend "torch" runs exactly
`causal_conv1d` then `F.silu` (the spec of the fused path), "triton" one kernel each way (ops/conv/triton.py: float32
taps and SiLU in registers, the backward recomputes the pre-activation instead of saving it); "auto" = triton on
CUDA, torch elsewhere. With T = 1 and a state it is also the decode step, in one launch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rows import BACKENDS, pick_backend

GPU_MODULE = "slimkv.ops.conv.triton"


def _check(x, weight, bias, state, name):
    C, K = weight.shape[0], weight.shape[-1]
    if weight.dim() != 2 or x.shape[-1] != C:
        raise ValueError(
            f"{name}: weight must be [C, K] with C = x's last dim; got {tuple(weight.shape)} for x {tuple(x.shape)}"
        )
    if bias is not None and bias.shape != (C,):
        raise ValueError(f"{name}: bias must be [C] = [{C}]; got {tuple(bias.shape)}")
    if state is not None and state.shape != (x.shape[0], C, K - 1):
        raise ValueError(
            f"{name}: state must be [B, C, K - 1] = [{x.shape[0]}, {C}, {K - 1}]; got {tuple(state.shape)}"
        )


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise conv over a whole sequence.

    Args:
        x: [B, T, C].  weight: [C, K].  bias: [C] or None.
        initial_state: [B, C, K - 1], the K - 1 inputs before x (oldest first), or None for zeros.
        output_final_state: also return the last K - 1 inputs [B, C, K - 1] (carried-state inputs shifted in
            when T < K - 1).
    Returns:
        y [B, T, C] in x's dtype, and the final state or None.
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be [B, T, C]; got {tuple(x.shape)}")
    _check(x, weight, bias, initial_state, "causal_conv1d")
    B, T, C = x.shape
    K = weight.shape[-1]
    # [B, C, K - 1 + T]: the history in front of the sequence, so the conv needs no padding of its own
    history = x.new_zeros(B, C, K - 1) if initial_state is None else initial_state.to(x.dtype)
    padded = torch.cat((history, x.transpose(1, 2)), dim=-1)
    if T == 0:
        # F.conv1d refuses an input shorter than the kernel; an empty sequence only passes the state through
        y = x.new_zeros(B, C, 0)
    else:
        y = F.conv1d(padded, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype), groups=C)
    final_state = padded[..., padded.shape[-1] - (K - 1) :].clone() if output_final_state else None
    return y.transpose(1, 2), final_state


def causal_conv1d_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SiLU(causal_conv1d(x, ...)): same arguments and final state as `causal_conv1d`; y [B, T, C] in x's dtype.

    Example (decode: one token, state carried):
        >>> y, state = causal_conv1d_silu(x_t[:, None], w, b, state, output_final_state=True)
    """
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d_silu: x must be [B, T, C]; got {tuple(x.shape)}")
    _check(x, weight, bias, initial_state, "causal_conv1d_silu")
    if x.shape[1] == 0 or pick_backend("causal_conv1d_silu", backend, GPU_MODULE, x, weight, bias,
                                       initial_state) == "torch":
        y, final_state = causal_conv1d(x, weight, bias, initial_state, output_final_state)
        return F.silu(y), final_state
    from .triton import causal_conv1d_silu_triton

    return causal_conv1d_silu_triton(x, weight, bias, initial_state, output_final_state)


def causal_conv1d_step(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x [B, C], state [B, C, K - 1] -> (y [B, C] in x's dtype, new_state [B, C, K - 1]).

    The T = 1 case of `causal_conv1d`; the state is not modified in place.
    """
    if x.dim() != 2:
        raise ValueError(f"causal_conv1d_step: x must be [B, C]; got {tuple(x.shape)}")
    _check(x, weight, bias, state, "causal_conv1d_step")
    # [B, C, K]: oldest input first, the current one last
    window = torch.cat((state.to(x.dtype), x.unsqueeze(-1)), dim=-1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = (window.to(acc) * weight.to(acc)).sum(-1)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype), window[..., 1:].to(state.dtype)


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec: an explicit loop over time and taps. x [B, T, C] -> (y [B, T, C], final_state [B, C, K - 1])."""
    B, T, C = x.shape
    K = weight.shape[-1]
    # inputs oldest first: K - 1 carried ones, then the sequence
    inputs = [x.new_zeros(B, C) for _ in range(K - 1)] if initial_state is None else list(initial_state.unbind(-1))
    inputs += list(x.unbind(1))
    outputs = []
    for t in range(T):
        y_t = x.new_zeros(B, C) if bias is None else bias.expand(B, C).clone()
        for j in range(K):
            # tap j reads the input K - 1 - j steps back; inputs[t + K - 1] is x[t]
            y_t = y_t + weight[:, j] * inputs[t + j]
        outputs.append(y_t)
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(B, 0, C)
    final_state = torch.stack(inputs[len(inputs) - (K - 1) :], dim=-1) if K > 1 else x.new_zeros(B, C, 0)
    return y, final_state
