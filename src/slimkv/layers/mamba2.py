"""A Mamba2-style mixer whose scan is the project's gated-linear-attention op (scalar decay per head).

legend: B batch, T time, d model width, H heads, P head (value) dim, N state size, Gb / Gc groups of B / C

    x = h W_x [H*P],  B = h W_B [Gb*N],  C = h W_C [Gc*N]   -> depthwise causal conv (+ SiLU) over [x | B | C]
    dt = softplus(h W_dt + dt_bias) [H],  log a = -exp(A_log) * dt   (<= 0, one per head: Mamba2's SSD)
    S_t = a_t S_{t-1} + B_t^T (dt_t x_t),   y_t = C_t S_t + D x_t     (= gla(q=C, k=B, v=dt*x, log_decay, scale=1))
    out = W_out(RMSNorm_per_head(y [* SiLU(z)]))

Differences from the reference Mamba2 block, on purpose: B and C may have different group counts (RecurFormer's
attention-derived init gives C one group per query head from W_q, B one group per KV head from W_k), x/B/C are
separate projections with optional biases (Qwen2's q/k/v carry biases), the conv activation can be turned off, and
the output norm is per head (heads stay independent, like the attention heads they replace).

The sequence path runs through the fused ops Rodimus uses (`kernel_backend`, "auto" = Triton on CUDA): one
projection for [x | B | C], conv + SiLU in one kernel (ops/conv), and the per-head norm as rows of P channels of
ops/norm's gated RMSNorm, its per-channel weight folded into out_proj. On an H200 the torch glue these replace was
62% of a Mamba2-1.5B training step's kernel time (benchmarks/results/train_mamba2_vs_rodimus_h200_2026-12-02.json).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch import nn

from ..ops import decode as decode_ops
from ..ops.conv import causal_conv1d, causal_conv1d_silu, causal_conv1d_step
from ..ops.gla import gla, gla_step
from ..ops.norm import gated_rms_norm, rms_norm


class Mamba2Mixer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        state_size: int = 64,
        num_b_groups: int = 1,
        num_c_groups: int = 1,
        conv_size: int = 4,
        out_size: int | None = None,
        use_gate: bool = False,
        conv_activation: bool = True,
        proj_bias: bool = False,
        norm_eps: float = 1e-5,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        gla_backend: str = "auto",
        decode_backend: str = "auto",
        kernel_backend: str = "auto",
    ):
        super().__init__()
        if num_heads % num_b_groups or num_heads % num_c_groups:
            raise ValueError(
                f"Mamba2Mixer: heads ({num_heads}) must be a multiple of B groups ({num_b_groups}) and C groups "
                f"({num_c_groups})"
            )
        H, P, N = num_heads, head_dim, state_size
        self.num_heads, self.head_dim, self.state_size = H, P, N
        self.num_b_groups, self.num_c_groups = num_b_groups, num_c_groups
        self.conv_size, self.use_gate, self.conv_activation = conv_size, use_gate, conv_activation
        self.norm_eps, self.gla_backend, self.decode_backend = norm_eps, gla_backend, decode_backend
        self.kernel_backend = kernel_backend
        self.dt_min, self.dt_max = dt_min, dt_max
        self.conv_channels = H * P + (num_b_groups + num_c_groups) * N

        self.x_proj = nn.Linear(hidden_size, H * P, bias=proj_bias)
        self.b_proj = nn.Linear(hidden_size, num_b_groups * N, bias=proj_bias)
        self.c_proj = nn.Linear(hidden_size, num_c_groups * N, bias=proj_bias)
        self.dt_proj = nn.Linear(hidden_size, H, bias=False)
        self.z_proj = nn.Linear(hidden_size, H * P, bias=False) if use_gate else None
        # depthwise conv weight [C, K] (the conv op's layout); weight[:, -1] multiplies the current token
        self.conv_weight = nn.Parameter(torch.empty(self.conv_channels, conv_size))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_channels))
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(H * P))
        self.out_proj = nn.Linear(H * P, out_size or hidden_size, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, init=nn.init) -> None:
        """Mamba2's init: A in [1, 16], dt log-uniform in [dt_min, dt_max] (through softplus), conv uniform.
        `init`: see DDTSMixer.reset_parameters (transformers.initialization leaves loaded tensors alone)."""
        H = self.num_heads
        dt = torch.exp(torch.empty(H).uniform_(math.log(dt_min), math.log(dt_max))).clamp_min(1e-4)
        for param, value in ((self.A_log, torch.empty(H).uniform_(1, 16).log()),
                             (self.dt_bias, dt + torch.log(-torch.expm1(-dt)))):
            value = value.to(param)
            init.copy_(param, value) if hasattr(init, "copy_") else param.copy_(value)
        bound = self.conv_size ** -0.5
        init.uniform_(self.conv_weight, -bound, bound)
        init.zeros_(self.conv_bias)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {
            "conv_state": (batch_size, self.conv_channels, self.conv_size - 1),
            "ssm_state": (batch_size, self.num_heads, self.state_size, self.head_dim),
        }

    def _expand_groups(self, t: torch.Tensor, groups: int) -> torch.Tensor:
        """[..., G*N] -> [..., H, N], head h reading group h // (H // G)."""
        t = t.unflatten(-1, (groups, self.state_size))
        return t.repeat_interleave(self.num_heads // groups, dim=-2)

    def forward(
        self,
        h: torch.Tensor,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """h [B, T, d]; padding_mask [B, T] bool (True = real token). Returns y [B, T, out] and, when use_cache,
        (conv_state [B, C, K-1], ssm_state [B, H, N, P] float32). T = 1 with both states given is a decode step."""
        Bsz, T, _ = h.shape
        H, P = self.num_heads, self.head_dim
        xbc = self._project_xbc(h, stacked=T > 1)
        dt = F.softplus(self.dt_proj(h).float() + self.dt_bias.float())  # [B, T, H]
        if padding_mask is not None:
            # padded positions must not enter the conv history, and must leave the state unchanged (dt = 0)
            real = padding_mask.unsqueeze(-1)
            xbc = xbc * real.to(xbc.dtype)
            dt = dt * real.to(dt.dtype)
        decoding = T == 1 and conv_state is not None and ssm_state is not None
        if decoding:
            xbc_conv, new_conv = causal_conv1d_step(xbc[:, 0], self.conv_weight, self.conv_bias, conv_state)
            xbc_conv = xbc_conv.unsqueeze(1)
            if self.conv_activation:
                xbc_conv = F.silu(xbc_conv)
        elif self.conv_activation:
            xbc_conv, new_conv = causal_conv1d_silu(xbc, self.conv_weight, self.conv_bias, conv_state,
                                                    output_final_state=use_cache, backend=self.kernel_backend)
        else:
            xbc_conv, new_conv = causal_conv1d(xbc, self.conv_weight, self.conv_bias, conv_state,
                                               output_final_state=use_cache)
        if padding_mask is not None:
            xbc_conv = xbc_conv * padding_mask.unsqueeze(-1).to(xbc_conv.dtype)
        x, b, c = xbc_conv.split([H * P, self.num_b_groups * self.state_size, self.num_c_groups * self.state_size], -1)
        x = x.unflatten(-1, (H, P))
        k = self._expand_groups(b, self.num_b_groups)
        q = self._expand_groups(c, self.num_c_groups)
        log_decay = -torch.exp(self.A_log.float()) * dt
        v = x * dt.unsqueeze(-1).to(x.dtype)
        if decoding:
            o, new_ssm = gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], ssm_state, 1.0)
            o = o.unsqueeze(1)
        else:
            o, new_ssm = gla(q, k, v, log_decay, scale=1.0, initial_state=ssm_state, output_final_state=use_cache,
                             backend=self.gla_backend)
        return self._readout(o, x, h), ((new_conv, new_ssm) if use_cache else None)

    def _project_xbc(self, h: torch.Tensor, stacked: bool) -> torch.Tensor:
        """[x | B | C] of h [..., d]. stacked (a sequence): one matmul with the three weights stacked (no
        activation-sized concatenation forward or split backward); a decode token keeps three matmuls, since
        stacking the weights every step would read them twice."""
        projections = (self.x_proj, self.b_proj, self.c_proj)
        if not stacked:
            return torch.cat([proj(h) for proj in projections], dim=-1)
        bias = None if self.x_proj.bias is None else torch.cat([proj.bias for proj in projections])
        return F.linear(h, torch.cat([proj.weight for proj in projections]), bias)

    def _readout(self, o: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """o, x [..., H, P] -> out_proj(RMSNorm_per_head((o + D x) [* SiLU(z)]) * norm_weight), in h's dtype; the
        norm weight multiplies out_proj's columns instead of the activations (the same product)."""
        z = self.z_proj(h) if self.z_proj is not None else None
        fused = o.is_cuda and self.kernel_backend != "torch"
        if not fused and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (o, x, z)):
            # the torch spec keeps float32 intermediates for backward: about 50 KiB per token and layer at the 130m
            # shape (benchmarks/results/matched_130m_h200_2026-12-02); recomputing them keeps only o, x and z. The
            # Triton kernels recompute in their own backward.
            y = checkpoint(self._head_norm, o, x, z, h.dtype, use_reentrant=False)
        else:
            y = self._head_norm(o, x, z, h.dtype)
        return F.linear(y, self.out_proj.weight * self.norm_weight.to(self.out_proj.weight.dtype))

    def _head_norm(self, o: torch.Tensor, x: torch.Tensor, z: torch.Tensor | None,
                   dtype: torch.dtype) -> torch.Tensor:
        """(o + D x) [* SiLU(z)], RMS-normalised over each head's P channels (no weight): [..., H*P] in `dtype`.
        Rows of P channels through ops/norm (D is per head, so it scales x before the op's unit skip scale)."""
        H, P = self.num_heads, self.head_dim
        unit = torch.ones(P, device=o.device, dtype=torch.float32)
        skip = x * self.D.to(x.dtype)[:, None]
        rows = o.shape[:-2]
        if z is None:
            y = rms_norm((o + skip).reshape(-1, P), unit, self.norm_eps, out_dtype=dtype, backend=self.kernel_backend)
        else:
            y = gated_rms_norm(o.reshape(-1, P), z.reshape(-1, P), unit, self.norm_eps, out_dtype=dtype,
                               skip=skip.reshape(-1, P), skip_scale=unit, backend=self.kernel_backend)
        return y.reshape(*rows, H * P)

    @torch.no_grad()
    def step(self, h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One decode token: h [B, d] -> [B, out]; both states updated in place (fixed addresses for CUDA graphs)."""
        H, P = self.num_heads, self.head_dim
        xbc = torch.cat((self.x_proj(h), self.b_proj(h), self.c_proj(h)), dim=-1)
        dt = F.softplus(self.dt_proj(h).float() + self.dt_bias.float())  # [B, H]
        if self.conv_activation:
            xbc_conv = decode_ops.conv_silu_step(xbc, self.conv_weight, self.conv_bias, conv_state,
                                                 self.decode_backend)
        else:
            xbc_conv, new_conv = causal_conv1d_step(xbc, self.conv_weight, self.conv_bias, conv_state)
            conv_state.copy_(new_conv)
        x, b, c = xbc_conv.split([H * P, self.num_b_groups * self.state_size, self.num_c_groups * self.state_size], -1)
        x = x.unflatten(-1, (H, P))
        log_decay = -torch.exp(self.A_log.float()) * dt
        o, new_ssm = gla_step(self._expand_groups(c, self.num_c_groups), self._expand_groups(b, self.num_b_groups),
                              x * dt.unsqueeze(-1).to(x.dtype), log_decay, ssm_state, 1.0)
        ssm_state.copy_(new_ssm)
        return self._readout(o, x, h)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None, init=nn.init) -> None:
        """normal(std) projections (zero biases), normal(residual_std) output projection, Mamba2's A / dt / conv
        init, D = 1 and unit norm weights. `init`: see DDTSMixer.reset_parameters."""
        for lin in (self.x_proj, self.b_proj, self.c_proj, self.dt_proj, self.z_proj):
            if lin is not None:
                init.normal_(lin.weight, mean=0.0, std=std)
                if lin.bias is not None:
                    init.zeros_(lin.bias)
        init.normal_(self.out_proj.weight, mean=0.0, std=std if residual_std is None else residual_std)
        self.reset_ssm_parameters(self.dt_min, self.dt_max, init)
        init.ones_(self.D)
        init.ones_(self.norm_weight)
