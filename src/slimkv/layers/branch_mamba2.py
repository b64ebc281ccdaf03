"""RecurFormer branch `mamba2`: the replaced heads become Mamba2 heads (the paper's family), one per query head.

legend: B batch, T time, d model width, R replaced query heads, G replaced KV units, D head dim

Shape (layers/mamba2.py): R heads of head dim = state size = D, B grouped per replaced KV unit (G groups), C one
group per head, so the attention-derived init has a slot for every pretrained row: C <- W_q of the replaced heads,
B <- W_k of their units, x <- W_v of each head's unit (Mamba in the Llama's V -> x, K -> B, Q -> C).
"""
from __future__ import annotations

import math

import torch

from .branches import BranchGeometry, ReplacedHeads, ScanStateBranch, copy_rows, normal_init, register_branch
from .mamba2 import Mamba2Mixer


@register_branch("mamba2")
class Mamba2Branch(ScanStateBranch, Mamba2Mixer):
    pretrained = False

    def __init__(self, geometry: BranchGeometry, state_size: int | None = None, conv_size: int = 4,
                 use_gate: bool = False, conv_activation: bool = True, proj_bias: bool | None = None,
                 gla_backend: str = "auto"):
        R, D = geometry.num_heads, geometry.head_dim
        super().__init__(geometry.hidden_size, R, D, state_size=state_size or D, num_b_groups=geometry.num_units,
                         num_c_groups=R, conv_size=conv_size, out_size=R * D, use_gate=use_gate,
                         conv_activation=conv_activation,
                         proj_bias=geometry.bias if proj_bias is None else proj_bias, gla_backend=gla_backend)
        self.num_units = geometry.num_units

    @torch.no_grad()
    def init_from_heads(self, heads: ReplacedHeads, init: str) -> None:
        """zero: random projections, zero output (step 0 = the heads pruned). attention: C <- W_q, B <- W_k,
        x <- W_v of each head's unit, identity conv (needs conv_activation=False), D = 0, decay horizons spread
        over 8..64 tokens, identity output."""
        if init not in ("zero", "attention"):
            raise ValueError(f"unknown init {init!r} for the mamba2 branch; choose zero or attention")
        normal_init(self, heads.init_std)
        self.reset_ssm_parameters()
        if init == "zero":
            self.out_proj.weight.zero_()
            return
        if self.conv_activation:
            raise ValueError("attention init passes W_q/W_k/W_v through the conv unchanged: build the branch with "
                             "conv_activation=False")
        D, per_unit = self.head_dim, self.num_heads // self.num_units
        unit_rows = heads.v_weight.view(self.num_units, D, -1)
        copy_rows(self.c_proj, heads.q_weight, heads.q_bias)
        copy_rows(self.b_proj, heads.k_weight, heads.k_bias)
        v_bias = None if heads.v_bias is None else heads.v_bias.view(self.num_units, D).repeat_interleave(per_unit, 0)
        copy_rows(self.x_proj, unit_rows.repeat_interleave(per_unit, 0).flatten(0, 1),
                  None if v_bias is None else v_bias.flatten())
        self.conv_weight.zero_()
        self.conv_weight[:, -1] = 1.0
        self.conv_bias.zero_()
        self.dt_proj.weight.zero_()
        # dt = softplus(dt_bias) = 1; per-step decay exp(-A) with horizons 1 / A from 8 to 64 tokens
        self.dt_bias.fill_(math.log(math.e - 1.0))
        horizons = torch.logspace(math.log10(8.0), math.log10(64.0), self.num_heads)
        self.A_log.copy_((1.0 / horizons).log())
        self.D.zero_()
        self.norm_weight.fill_(1.0)
        self.out_proj.weight.copy_(torch.eye(self.out_proj.weight.shape[0]))

    @torch.no_grad()
    def step(self, h, positions, inv_freq, state, seen):
        """One token: [B, d] -> [B, R, D], the conv and scan states updated in place."""
        y, (conv, ssm) = Mamba2Mixer.forward(self, h[:, None], state["conv_state"], state["ssm_state"], use_cache=True)
        state["conv_state"].copy_(conv)
        state["ssm_state"].copy_(ssm)
        return y[:, 0].unflatten(-1, (self.num_heads, self.head_dim))
