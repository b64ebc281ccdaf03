"""The Rodimus mixer: data-dependent tempered selection (DDTS) over gated linear attention.

legend: B batch, T time, d model width, e inner width (= expand_ratio * d), m memory size (keys), r low rank

    [x | z] = h W_fc;  x~ = SiLU(conv(x));  [q | k] = x~ W_in;  [g^ | t^] = x~ W_mem + b  (float32)
    g = softplus(g^), tau = sigmoid(t^), log alpha = -tau * g, input gate = g ** tau, k^ = k / ||k||
    v = sigmoid(low-rank(x)) * x        (the UN-convolved x)
    S_t = diag(alpha_t) S_{t-1} + (g_t ** tau_t * k^_t)^T v_t,    o_t = m^-1/2 q_t S_t + D * x~_t
    y = W_out(RMSNorm(o * SiLU(z)))

See shared/spec/rodimus.md section 1. One head: the state is a single [m, e] matrix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import decode as decode_ops
from ..ops.conv import causal_conv1d_silu
from ..ops.ddts_gates import ddts_gates
from ..ops.gla import gla
from ..ops.norm import rms_norm
from .norm import GatedRMSNorm, upcast


def align8(n: int) -> int:
    return (n + 7) // 8 * 8


def ddts_low_rank(hidden_size: int, low_rank: int | str = "auto") -> int:
    # rank follows d (not e), as in the official code
    return max(hidden_size // 64, 16) if low_rank == "auto" else int(low_rank)


class DDTSMixer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        expand_ratio: float = 2.0,
        mem_size: int = 64,
        conv_size: int = 4,
        low_rank: int | str = "auto",
        normalize_epsilon: float = 1e-12,
        norm_epsilon: float = 1e-5,
        out_size: int | None = None,
        gla_backend: str = "auto",
        decode_backend: str = "auto",
        kernel_backend: str = "auto",
    ):
        super().__init__()
        d = hidden_size
        e = align8(int(d * expand_ratio))
        m = mem_size
        r = ddts_low_rank(d, low_rank)
        self.inner_size, self.mem_size, self.conv_size = e, m, conv_size
        self.normalize_epsilon = normalize_epsilon
        self.gla_backend = gla_backend
        self.decode_backend = decode_backend
        self.kernel_backend = kernel_backend
        self._gate_params_f32: tuple | None = None

        self.fc = nn.Linear(d, 2 * e, bias=False)
        self.conv = nn.Conv1d(e, e, conv_size, groups=e, bias=True)
        self.qk_proj = nn.Linear(e, 2 * m, bias=False)
        self.gate_proj = nn.Linear(e, 2 * m, bias=True)
        self.channel_gate = nn.Sequential(nn.Linear(e, r, bias=False), nn.Linear(r, e, bias=True))
        self.D = nn.Parameter(torch.ones(e))
        self.out_norm = GatedRMSNorm(e, eps=norm_epsilon, backend=kernel_backend)
        self.out_proj = nn.Linear(e, out_size or d, bias=False)

        # markers read by the model's initialisation (spec section 4)
        for lin in (self.qk_proj, self.gate_proj, self.channel_gate[0], self.channel_gate[1]):
            lin._init_xavier_gain = 2**-2.5
        self.gate_proj._ddts_gate_bias = m
        self.out_proj._is_residual_out = True
        self.D._no_weight_decay = True

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {
            "conv_state": (batch_size, self.inner_size, self.conv_size - 1),
            "ssm_state": (batch_size, 1, self.mem_size, self.inner_size),
        }

    def _gates(self, x_conv: torch.Tensor):
        """Queries, tempered keys and log-decays; the gate projection and its math in float32 (ops/ddts_gates)."""
        q, k = self.qk_proj(x_conv).split(self.mem_size, dim=-1)
        w, b = upcast(self.gate_proj.weight), upcast(self.gate_proj.bias)
        gates = F.linear(upcast(x_conv), w, b)
        k_gated, log_decay = ddts_gates(gates, k, self.normalize_epsilon, out_dtype=q.dtype,
                                        backend=self.kernel_backend)
        return q, k_gated, log_decay

    def forward(
        self,
        h: torch.Tensor,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """h [B, T, d]; padding_mask [B, T] bool (True = real token). Returns y [B, T, out] and the new
        (conv_state [B, e, k-1], ssm_state [B, 1, m, e]) when use_cache, else None. One-token decoding with a
        carried state has its own fused path, `step`."""
        x, z = self.fc(h).chunk(2, dim=-1)
        if padding_mask is not None:
            # padded positions must not touch the conv history or the state
            x = x * padding_mask.unsqueeze(-1).to(x.dtype)
        x_conv, new_conv = causal_conv1d_silu(x, self.conv.weight.squeeze(1), self.conv.bias, conv_state,
                                              output_final_state=use_cache, backend=self.kernel_backend)
        q, k, log_decay = self._gates(x_conv)
        v = torch.sigmoid(self.channel_gate(x)) * x
        o, new_ssm = gla(
            q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), log_decay.unsqueeze(2), self.mem_size**-0.5,
            initial_state=ssm_state, output_final_state=use_cache, backend=self.gla_backend,
        )
        o = upcast(o.squeeze(2)) + upcast(self.D) * upcast(x_conv)
        y = self.out_proj(self.out_norm(o, z).to(h.dtype))
        return y, ((new_conv, new_ssm) if use_cache else None)

    def _gate_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gate_proj's weight and bias in float32 (the gates run in float32), converted once per weight version
        instead of on every decode step."""
        w, b = self.gate_proj.weight, self.gate_proj.bias
        if w.dtype in (torch.float32, torch.float64):
            return w, b
        key = (w.data_ptr(), w._version, b.data_ptr(), b._version)
        if self._gate_params_f32 is None or self._gate_params_f32[0] != key:
            self._gate_params_f32 = (key, w.detach().float(), b.detach().float())
        return self._gate_params_f32[1], self._gate_params_f32[2]

    @torch.no_grad()
    def step(self, h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One decode token: h [B, d] -> y [B, out]; conv_state [B, e, k-1] and ssm_state [B, 1, m, e] are updated
        in place. The T = 1 case of `forward` (same projections; the math between them fused in ops/decode)."""
        backend = self.decode_backend
        x, z = self.fc(h).chunk(2, dim=-1)
        x_conv = decode_ops.conv_silu_step(x, self.conv.weight.squeeze(1), self.conv.bias, conv_state, backend)
        q, k = self.qk_proj(x_conv).split(self.mem_size, dim=-1)
        w, b = self._gate_params()
        gates = F.linear(upcast(x_conv), w, b)
        up = self.channel_gate[1]
        u = decode_ops.ddts_step(q, k, gates, x, self.channel_gate[0](x), up.weight, up.bias, x_conv, z, self.D,
                                 ssm_state[:, 0], self.mem_size**-0.5, self.normalize_epsilon, backend)
        y = rms_norm(u, self.out_norm.weight, self.out_norm.eps, backend=self.kernel_backend)
        return self.out_proj(y.to(h.dtype))


@torch.no_grad()
def ddts_gate_bias_init(mem_size: int) -> torch.Tensor:
    """Official initial bias of `gate_proj` (spec section 4): [selection (m) | temperature (m)]."""
    dt = torch.exp(torch.empty(mem_size).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
    selection = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    temperature = torch.empty(mem_size).uniform_(1 / 16, 0.9)
    return torch.cat([selection, torch.log(temperature) - torch.log1p(-temperature)])  # logit
