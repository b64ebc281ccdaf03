"""The branches that serve RecurFormer's replaced attention heads, behind one small registry (name -> class).

legend: B batch, T time, d model width, R replaced query heads, G replaced KV units, D head dim

A converted attention layer (layers/hybrid_attention.py) keeps some KV units as attention and gives the others to
ONE branch, which reads the same normed input h [B, T, d] and returns the replaced heads' outputs [B, T, R, D]; they
go into those heads' slots before the pretrained o_proj. A branch is one file (branch_mamba2.py, branch_ddts.py,
branch_window.py, branch_window_mamba2.py) whose class is registered here and provides:

    __init__(geometry: BranchGeometry, **options)   options: the model config's `mixer_kwargs`
    pretrained: bool                     True when its weights ARE the replaced heads' rows (trained like the rest
                                         of the pretrained model), False for new weights (their own learning rate)
    pretrained_parts: tuple[str, ...]    optional: submodules of a branch with new weights that hold pretrained
                                         rows all the same (branch_window_mamba2.py's `window`): frozen in Stage A,
                                         the base learning rate in Stage B (`is_new_branch_parameter`)
    state_shapes(batch) -> {name: shape} its constant-size decode state, preallocated by models/cache.py
    init_from_heads(heads: ReplacedHeads, init)   its weights, from the replaced heads' q/k/v rows and an init
                                         rule: "zero" (output projection zero: step 0 = the heads pruned) or
                                         "attention" (reuse W_q / W_k / W_v where the branch has a slot for them)
    forward(h, rope, positions, padding_mask, state, seen) -> [B, T, R, D]
                                         the sequence path; with `state` (the layer's cache entry, holding `seen`
                                         earlier tokens) it continues that state and writes the new one in place
    step(h, positions, inv_freq, state, seen) -> [B, R, D]
                                         one decode token per row, state updated in place; graph-capturable (no
                                         host syncs: `seen` is the cache's device counter)

`rope` is (cos, sin) [B, T, D] of the tokens' positions (ops/rope.py); `inv_freq` [D / 2] the same frequencies for
the decode step. `padding_mask` [B, T] is True for real tokens (left padding must not reach any state).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

BRANCHES: dict[str, type[nn.Module]] = {}


@dataclass(frozen=True)
class BranchGeometry:
    """What a branch replaces: R = num_heads query heads of G = num_units KV units, in a model of width d."""

    hidden_size: int
    head_dim: int
    num_heads: int
    num_units: int
    # the replaced q/k/v projections carry biases (Qwen2)
    bias: bool = False
    # previous tokens the source model's own attention sees (Mistral's sliding window), None = all
    source_window: int | None = None


@dataclass(frozen=True)
class ReplacedHeads:
    """The q/k/v rows of the replaced heads: q [R*D, d], k and v [G*D, d] (unit order); biases or None."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    v_weight: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    # std of the normal init of new projection weights (the source config's initializer_range)
    init_std: float = 0.02


def copy_rows(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)
        if linear.bias is not None:
            linear.bias.copy_(bias if bias is not None else torch.zeros_like(linear.bias))


def normal_init(module: nn.Module, std: float) -> None:
    """Normal(0, std) weights and zero biases for every Linear below `module`."""
    with torch.no_grad():
        for linear in module.modules():
            if isinstance(linear, nn.Linear):
                linear.weight.normal_(0.0, std)
                if linear.bias is not None:
                    linear.bias.zero_()


class ScanStateBranch:
    """The sequence path of a branch whose mixer carries (conv_state, ssm_state) and takes
    `forward(h, conv_state, ssm_state, padding_mask, use_cache)` (layers/mamba2.py, layers/ddts.py): put it first
    among the bases so its `forward` wraps the mixer's."""

    def forward(self, h, rope=None, positions=None, padding_mask=None, state=None, seen: int = 0):
        """[B, T, d] -> [B, T, R, D]; see the module docstring for the arguments."""
        carried = state is not None and seen > 0
        y, new = super().forward(h, state["conv_state"] if carried else None, state["ssm_state"] if carried else None,
                                 padding_mask=padding_mask, use_cache=state is not None)
        if state is not None:
            state["conv_state"].copy_(new[0])
            state["ssm_state"].copy_(new[1])
        return y.unflatten(-1, (self.num_heads, self.head_dim))


def is_new_branch_parameter(cls: type[nn.Module], name: str) -> bool:
    """Whether parameter `name` (relative to a branch of class `cls`) holds new weights, not pretrained rows."""
    if cls.pretrained:
        return False
    return not any(name == part or name.startswith(part + ".") for part in getattr(cls, "pretrained_parts", ()))


def register_branch(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a branch available to converted models under `name` (their config's `mixer`)."""
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        BRANCHES[name] = cls
        cls.branch_name = name
        return cls

    return add


def branch_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(BRANCHES)


def branch_class(name: str) -> type[nn.Module]:
    _load_builtin()
    if name not in BRANCHES:
        raise ValueError(f"unknown branch {name!r}; choose one of {', '.join(BRANCHES)}")
    return BRANCHES[name]


def branch_option_names(name: str) -> tuple[str, ...]:
    """The options `name`'s branch takes (its constructor's keywords after the geometry)."""
    params = inspect.signature(branch_class(name).__init__).parameters
    return tuple(key for key in params if key not in ("self", "geometry"))


def build_branch(name: str, geometry: BranchGeometry, options: dict | None = None,
                 backends: dict[str, str] | None = None) -> nn.Module:
    """`name`'s branch for `geometry`; `backends` (e.g. {"gla_backend": "auto"}) reach the ones its class takes."""
    cls = branch_class(name)
    accepted = branch_option_names(name)
    unknown = [key for key in (options or {}) if key not in accepted]
    if unknown:
        raise ValueError(f"branch {name!r} has no option {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(accepted)}")
    chosen = {key: value for key, value in (backends or {}).items() if key in accepted}
    return cls(geometry, **{**chosen, **dict(options or {})})


def _load_builtin() -> None:
    # the built-in branches register themselves on import
    from . import branch_ddts, branch_mamba2, branch_window, branch_window_mamba2  # noqa: F401
