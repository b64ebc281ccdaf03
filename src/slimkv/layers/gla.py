"""The GLA mixer (Yang et al. 2024, gated linear attention): per-channel data-dependent decay heads, the baseline
Rodimus's DDTS is compared against (docs/evaluations.md).

legend: B batch, T time, d model width, H heads, K key dim per head, V value dim per head, r gate rank

    q = h W_q, k = h W_k  [H, K];   v = h W_v [H, V];   log alpha = logsigmoid(W_a2 W_a1 h) / 16   [H, K]
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = K^-1/2 q_t S_t                  (the project's gla op)
    y = W_o (RMSNorm_per_head(o) * SiLU(h W_g))

The state is H x K x V per sequence; `key_dim` (K) is the state-size knob of the MQAR sweeps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.gla import gla, gla_step

# GLA's normaliser of the gate logits: log alpha = logsigmoid(.) / 16 keeps early decays close to 1
GATE_TEMPERATURE = 16.0


class GLAMixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, key_dim: int, value_dim: int | None = None,
                 gate_low_rank: int = 16, norm_eps: float = 1e-5, out_size: int | None = None,
                 gla_backend: str = "auto"):
        super().__init__()
        if value_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"GLAMixer: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
            value_dim = hidden_size // num_heads
        H, K, V = num_heads, key_dim, value_dim
        self.num_heads, self.key_dim, self.value_dim = H, K, V
        self.norm_eps, self.gla_backend = norm_eps, gla_backend
        self.q_proj = nn.Linear(hidden_size, H * K, bias=False)
        self.k_proj = nn.Linear(hidden_size, H * K, bias=False)
        self.v_proj = nn.Linear(hidden_size, H * V, bias=False)
        self.g_proj = nn.Linear(hidden_size, H * V, bias=False)
        self.decay_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank, bias=False),
                                        nn.Linear(gate_low_rank, H * K, bias=True))
        self.norm_weight = nn.Parameter(torch.ones(V))
        self.out_proj = nn.Linear(H * V, out_size or hidden_size, bias=False)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, residual_std: float | None = None, init=nn.init) -> None:
        """Xavier-uniform with gain 2^-2.5 for the projections and the decay gate (as GLA does), zero gate bias,
        normal(residual_std) output projection, unit norm. `init`: see DDTSMixer.reset_parameters."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.decay_proj[0], self.decay_proj[1]):
            init.xavier_uniform_(lin.weight, gain=2**-2.5)
        init.zeros_(self.decay_proj[1].bias)
        init.normal_(self.out_proj.weight, mean=0.0, std=std if residual_std is None else residual_std)
        init.ones_(self.norm_weight)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {"ssm_state": (batch_size, self.num_heads, self.key_dim, self.value_dim)}

    def _inputs(self, h: torch.Tensor):
        H, K, V = self.num_heads, self.key_dim, self.value_dim
        q = self.q_proj(h).unflatten(-1, (H, K))
        k = self.k_proj(h).unflatten(-1, (H, K))
        v = self.v_proj(h).unflatten(-1, (H, V))
        log_decay = F.logsigmoid(self.decay_proj(h).float()).unflatten(-1, (H, K)) / GATE_TEMPERATURE
        return q, k, v, log_decay

    def _readout(self, o: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """o [..., H, V] -> W_o(RMSNorm_per_head(o) * SiLU(g)) in h's dtype."""
        y = o.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.norm_weight.float()
        y = y.flatten(-2) * F.silu(self.g_proj(h).float())
        return self.out_proj(y.to(h.dtype))

    def forward(self, h: torch.Tensor, conv_state: torch.Tensor | None = None,
                ssm_state: torch.Tensor | None = None, padding_mask: torch.Tensor | None = None,
                use_cache: bool = False):
        """h [B, T, d] -> (y [B, T, out], (None, ssm_state [B, H, K, V] float32) when use_cache). conv_state is
        accepted for the common mixer signature and unused (GLA has no short conv)."""
        q, k, v, log_decay = self._inputs(h)
        if padding_mask is not None:
            # a padded position adds nothing and decays nothing: the state passes through it unchanged
            real = padding_mask[..., None, None]
            k = k * real.to(k.dtype)
            log_decay = log_decay * real.to(log_decay.dtype)
        o, new_ssm = gla(q, k, v, log_decay, scale=self.key_dim**-0.5, initial_state=ssm_state,
                         output_final_state=use_cache, backend=self.gla_backend)
        return self._readout(o, h), ((None, new_ssm) if use_cache else None)

    @torch.no_grad()
    def step(self, h: torch.Tensor, conv_state: torch.Tensor | None, ssm_state: torch.Tensor) -> torch.Tensor:
        """One decode token: h [B, d] -> [B, out]; ssm_state [B, H, K, V] updated in place."""
        q, k, v, log_decay = self._inputs(h)
        o, new_ssm = gla_step(q, k, v, log_decay, ssm_state, self.key_dim**-0.5)
        ssm_state.copy_(new_ssm)
        return self._readout(o, h)
