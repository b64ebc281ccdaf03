"""RecurFormer branch `ddts`: the replaced heads become one Rodimus DDTS mixer (layers/ddts.py) per layer.

legend: d model width, R replaced query heads, D head dim

Inner width = R * D, the replaced heads' output width, so the branch costs about what the heads did; its output
[B, T, R * D] fills their slots. `state_size` is DDTS's expansion factor n (`mem_size`, spec/rodimus.md): the
decode state is [n, R * D], so n per replaced head plays the role of the Mamba2 branch's N (layers/branch_mamba2.py)
and `--state-size` sets both. DDTS reads q / k from its own convolved features, so W_q / W_k have no slot to go
into: only the zero init exists (the official DDTS init, output projection zero).
"""
from __future__ import annotations

import torch
from torch import nn

from .branches import BranchGeometry, ReplacedHeads, ScanStateBranch, normal_init, register_branch
from .ddts import DDTSMixer, ddts_gate_bias_init


@register_branch("ddts")
class DDTSBranch(ScanStateBranch, DDTSMixer):
    pretrained = False

    def __init__(self, geometry: BranchGeometry, state_size: int | None = None, conv_size: int = 4,
                 gla_backend: str = "auto", decode_backend: str = "auto", kernel_backend: str = "auto"):
        R, D = geometry.num_heads, geometry.head_dim
        # none: DDTSMixer's own n (layers/ddts.py), the state every earlier ddts result was measured with
        n = {"mem_size": state_size} if state_size else {}
        super().__init__(geometry.hidden_size, expand_ratio=R * D / geometry.hidden_size, **n,
                         conv_size=conv_size, out_size=R * D, gla_backend=gla_backend, decode_backend=decode_backend,
                         kernel_backend=kernel_backend)
        self.num_heads, self.head_dim = R, D

    @torch.no_grad()
    def init_from_heads(self, heads: ReplacedHeads, init: str) -> None:
        if init != "zero":
            raise ValueError("the ddts branch has no attention init (DDTS reads q/k from its own conv features, so "
                             "W_q/W_k have no slot to go into); use init zero")
        normal_init(self, heads.init_std)
        # the official DDTS init (spec/rodimus.md section 4): xavier gains and the gate bias
        for linear in self.modules():
            gain = getattr(linear, "_init_xavier_gain", None)
            if gain is not None:
                nn.init.xavier_uniform_(linear.weight, gain=gain)
        self.gate_proj.bias.copy_(ddts_gate_bias_init(self.mem_size))
        bound = self.conv_size ** -0.5
        self.conv.weight.uniform_(-bound, bound)
        self.conv.bias.uniform_(-bound, bound)
        self.D.fill_(1.0)
        self.out_proj.weight.zero_()

    @torch.no_grad()
    def step(self, h, positions, inv_freq, state, seen):
        """One token: [B, d] -> [B, R, D] through DDTS's fused step, its states updated in place."""
        y = DDTSMixer.step(self, h, state["conv_state"], state["ssm_state"])
        return y.unflatten(-1, (self.num_heads, self.head_dim))
