"""AdamW with the official Rodimus no-decay exclusions, and linear warmup + cosine decay.

Exclusions (docs/rodimus.md section 4; codefuse-ai/rodimus `_set_no_weight_decay`): biases, norm weights, the
Rodimus `residual_weight` D, and the input embedding only when it is NOT tied to the LM head (a tied embedding is
the LM head's weight, which the official code decays).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) of parameters trained without weight decay.

    Every 1-D parameter (biases, norm weights, D) plus any a model lists in `no_weight_decay_names()`; then the
    embedding rule is applied on top: excluded when untied, decayed when tied.
    """
    names = {name for name, param in model.named_parameters() if param.ndim < 2 or name.endswith("residual_weight")}
    own = getattr(model, "no_weight_decay_names", None)
    if callable(own):
        names |= set(own())
    get_input, get_output = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_input is not None and get_input() is not None:
        embedding = get_input().weight
        head = get_output() if get_output is not None else None
        tied = head is not None and head.weight is embedding
        embedding_names = {name for name, param in model.named_parameters(remove_duplicate=False)
                           if param is embedding}
        names = names | embedding_names if not tied else names - embedding_names
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay, no decay); each parameter once, in `named_parameters` order."""
    excluded = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in excluded else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, groups: list[dict] | None = None) -> torch.optim.AdamW:
    """AdamW over `groups` (default: `param_groups(model, cfg.weight_decay)`); a group without its own "lr" runs at
    cfg.lr."""
    # foreach=False: the per-parameter loop gives bitwise-identical updates regardless of how DTensor shards
    # are grouped, which keeps FSDP and single-process runs comparable
    return torch.optim.AdamW(
        groups if groups is not None else param_groups(model, cfg.weight_decay), lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False,
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """`lr_factor` as a scheduler whose horizon can move mid-run (`set_total_steps`: the main job plans the run's
    length from measured throughput as it goes). The horizon is not part of state_dict: a resumed run takes it from
    its own config, as before."""

    HORIZON = ("warmup_steps", "total_steps", "min_lr_ratio")

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float):
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)

    def set_total_steps(self, total_steps: int, warmup_steps: int | None = None) -> None:
        """Move the end of the cosine (and optionally the warmup); the lr of the next step follows at once."""
        self.total_steps = int(total_steps)
        if warmup_steps is not None:
            self.warmup_steps = int(warmup_steps)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * self._factor(self.last_epoch)

    def state_dict(self) -> dict:
        state = super().state_dict()
        for key in self.HORIZON:
            state.pop(key, None)
        state["lr_lambdas"] = [None]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        horizon = {key: getattr(self, key) for key in self.HORIZON}
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self.HORIZON})
        self.__dict__.update(horizon)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> WarmupCosineLR:
    return WarmupCosineLR(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
