"""RecurFormer branch `window_mamba2`: the streaming heads of branch_window.py plus a Mamba2 branch beside them,
their outputs summed, so the replaced heads see sinks + a local window exactly and everything older through a
constant-size recurrent state.

legend: B batch, T time, d model width, R replaced query heads, G replaced KV units, D head dim

Why: on SmolLM2-135M the plain window branch came within 1.8% of the control's perplexity while mamba2 alone stayed
12.8% above it after 240 + 200 steps, and the window forgets a passkey once it leaves the window
(docs/recurformer.md). Local softmax attention plus a linear-attention/SSM term is how LoLCATs and Rodimus+ (SW-SKA
beside the recurrence) keep quality; here the Mamba2 part starts at zero output (init "zero"), so step 0 IS the window
variant and Stage A / B only have to learn what the window misses.

Weights: `window.*` are the replaced heads' own q/k/v rows (pretrained: frozen in Stage A, the base learning rate in
Stage B); `recurrent.*` are new (Stage A aligns them to the teacher's heads minus the window's output; the branch
learning rate in Stage B). Decode state: the window's sink + ring slots and the Mamba2 conv and scan states.
"""
from __future__ import annotations

import torch
from torch import nn

from .branch_mamba2 import Mamba2Branch
from .branch_window import WindowBranch
from .branches import BranchGeometry, ReplacedHeads, register_branch


@register_branch("window_mamba2")
class WindowMamba2Branch(nn.Module):
    pretrained = False
    # submodules holding the replaced heads' pretrained rows (layers/branches.py is_new_branch_parameter)
    pretrained_parts = ("window",)

    def __init__(self, geometry: BranchGeometry, window: int = 64, sinks: int = 4, state_size: int | None = None,
                 conv_size: int = 4, attn_backend: str = "auto", decode_backend: str = "auto",
                 gla_backend: str = "auto"):
        super().__init__()
        self.window = WindowBranch(geometry, window, sinks, attn_backend=attn_backend, decode_backend=decode_backend)
        self.recurrent = Mamba2Branch(geometry, state_size=state_size, conv_size=conv_size, gla_backend=gla_backend)
        self.num_heads, self.head_dim = geometry.num_heads, geometry.head_dim

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        window, recurrent = self.window.state_shapes(batch_size), self.recurrent.state_shapes(batch_size)
        assert not window.keys() & recurrent.keys(), "the two parts' decode states must not share a name"
        return {**window, **recurrent}

    @torch.no_grad()
    def init_from_heads(self, heads: ReplacedHeads, init: str) -> None:
        """The window keeps the heads' rows; the Mamba2 part starts at zero output (step 0 = the window branch)."""
        if init != "zero":
            raise ValueError("the window_mamba2 branch starts its Mamba2 part at zero output: use init zero, "
                             f"not {init!r}")
        self.window.init_from_heads(heads, init)
        self.recurrent.init_from_heads(heads, "zero")

    def forward(self, h, rope, positions, padding_mask=None, state=None, seen: int = 0):
        """[B, T, d] -> [B, T, R, D]; see layers/branches.py for the arguments."""
        return (self.window(h, rope, positions, padding_mask, state, seen)
                + self.recurrent(h, rope, positions, padding_mask, state, seen))

    @torch.no_grad()
    def step(self, h, positions, inv_freq, state, seen):
        """One token: [B, d] -> [B, R, D], both parts' states updated in place."""
        return self.window.step(h, positions, inv_freq, state, seen) + self.recurrent.step(h, positions, inv_freq,
                                                                                          state, seen)
