"""The Rodimus mixer: data-dependent tempered selection (DDTS) over gated linear attention.

legend: B batch, T time, d model width, e inner width (= expand_ratio * d), m memory size (keys), r low rank

    [x | z] = h W_fc;  x~ = SiLU(conv(x));  [q | k] = x~ W_in;  [g^ | t^] = x~ W_mem + b  (float32)
    g = softplus(g^), tau = sigmoid(t^), log alpha = -tau * g, input gate = g ** tau, k^ = k / ||k||
    v = sigmoid(low-rank(x)) * x        (the UN-convolved x)
    S_t = diag(alpha_t) S_{t-1} + (g_t ** tau_t * k^_t)^T v_t,    o_t = m^-1/2 q_t S_t + D * x~_t
    y = W_out(RMSNorm(o * SiLU(z)))

See docs/rodimus.md section 1. One head: the state is a single [m, e] matrix.
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
from ..ops.rows import mm_float32
from .norm import GatedRMSNorm, matmul_dtype, upcast


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

        self.fc = nn.Linear(d, 2 * e, bias=False)
        self.conv = nn.Conv1d(e, e, conv_size, groups=e, bias=True)
        self.qk_proj = nn.Linear(e, 2 * m, bias=False)
        self.gate_proj = nn.Linear(e, 2 * m, bias=True)
        self.channel_gate = nn.Sequential(nn.Linear(e, r, bias=False), nn.Linear(r, e, bias=True))
        self.D = nn.Parameter(torch.ones(e))
        self.out_norm = GatedRMSNorm(e, eps=norm_epsilon, backend=kernel_backend)
        self.out_proj = nn.Linear(e, out_size or d, bias=False)

        self.D._no_weight_decay = True

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None, init=nn.init) -> None:
        """The official initialisation (docs/rodimus.md, "Initialisation"): normal(std) for the input projection,
        Xavier-uniform with gain 2^-2.5 for the selection, gate and channel-gate projections, the gate bias that puts
        softplus(g^) in [1e-3, 1e-1] and sigmoid(t^) in [1/16, 0.9], normal(residual_std) for the output projection
        (std / sqrt(residual branches x layers), chosen by the model), PyTorch's default for the short conv, D = 1.
        `init` is the module of init functions (models pass transformers.initialization, which skips loaded weights)."""
        init.normal_(self.fc.weight, mean=0.0, std=std)
        init.kaiming_uniform_(self.conv.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.conv.weight.shape[1] * self.conv.weight.shape[2])
        init.uniform_(self.conv.bias, -bound, bound)
        for lin in (self.qk_proj, self.gate_proj, self.channel_gate[0], self.channel_gate[1]):
            init.xavier_uniform_(lin.weight, gain=2**-2.5)
        bias = ddts_gate_bias_init(self.mem_size).to(self.gate_proj.bias)
        # torch.nn.init has no copy_; transformers.initialization's skips a loaded bias
        init.copy_(self.gate_proj.bias, bias) if hasattr(init, "copy_") else self.gate_proj.bias.copy_(bias)
        init.zeros_(self.channel_gate[1].bias)
        init.normal_(self.out_proj.weight, mean=0.0, std=std if residual_std is None else residual_std)
        init.ones_(self.D)
        init.ones_(self.out_norm.weight)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {
            "conv_state": (batch_size, self.inner_size, self.conv_size - 1),
            "ssm_state": (batch_size, 1, self.mem_size, self.inner_size),
        }

    def _gates(self, x_conv: torch.Tensor):
        """Queries, tempered keys and log-decays; the gate projection and its math in float32 (ops/ddts_gates)."""
        q, k = self.qk_proj(x_conv).split(self.mem_size, dim=-1)
        k_gated, log_decay = ddts_gates(self._gate_logits(x_conv), k, self.normalize_epsilon, out_dtype=q.dtype,
                                        backend=self.kernel_backend)
        return q, k_gated, log_decay

    def _gate_logits(self, x_conv: torch.Tensor) -> torch.Tensor:
        """[g^ | t^] = gate_proj(x_conv), in float32 outside autocast. Half inputs and weights are multiplied with
        float32 accumulation and a float32 result (ops/rows mm_float32): the same numbers as upcasting both first,
        without the two float32 copies. Under autocast the projection runs in the autocast dtype like every other."""
        w, b = self.gate_proj.weight, self.gate_proj.bias
        if matmul_dtype(x_conv) is not None:
            return F.linear(x_conv, w, b)
        if x_conv.dtype in (torch.float16, torch.bfloat16) and w.dtype == x_conv.dtype:
            rows = mm_float32(x_conv.reshape(-1, x_conv.shape[-1]), w.t()) + b.float()
            return rows.view(*x_conv.shape[:-1], -1)
        return F.linear(upcast(x_conv), upcast(w), upcast(b))

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
        # the D skip (o + D * x_conv) runs inside the gated norm's kernel (ops/norm), no float32 copies
        y = self.out_proj(self.out_norm(o.squeeze(2), z, skip=x_conv, skip_scale=self.D).to(h.dtype))
        return y, ((new_conv, new_ssm) if use_cache else None)

    @torch.no_grad()
    def step(self, h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One decode token: h [B, d] -> y [B, out]; conv_state [B, e, k-1] and ssm_state [B, 1, m, e] are updated
        in place. The T = 1 case of `forward` (same projections; the math between them fused in ops/decode)."""
        backend = self.decode_backend
        x, z = self.fc(h).chunk(2, dim=-1)
        x_conv = decode_ops.conv_silu_step(x, self.conv.weight.squeeze(1), self.conv.bias, conv_state, backend)
        qk, gates, hidden = decode_ops.ddts_project(x_conv, x, self.qk_proj.weight, self.gate_proj.weight,
                                                    self.gate_proj.bias, self.channel_gate[0].weight, backend)
        q, k = qk.split(self.mem_size, dim=-1)
        up = self.channel_gate[1]
        u = decode_ops.ddts_step(q, k, gates, x, hidden, up.weight, up.bias, x_conv, z, self.D,
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
