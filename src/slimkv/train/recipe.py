"""What the trainer trains: the model, its optimizer groups and its export, as one object.

The default, `ConfigModelRecipe`, builds the `model` section of the run config with the model factory (factory.py)
and exports a Hugging Face folder (export.py). A workflow that trains something else on the same loop, checkpoints
and logs (RecurFormer's gate, Stage A and Stage B models, slimkv/recurformer/train.py) passes its own recipe:

    Trainer(config, recipe=my_recipe, sources=my_sources).fit()

The model's forward takes `input_ids` and `targets` (the next tokens, -100 = ignore) and returns `.loss`, the
objective the loop minimises; in eval mode it returns the loss held-out evaluation reports.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import nn

from .config import OptimConfig, RunConfig
from .data_sources import DataSources
from .export import export_model
from .factory import build_model
from .optim import param_groups


class Recipe(Protocol):
    # shown in the trainer's first line
    name: str

    def build_model(self, config: RunConfig, vocab_size: int) -> nn.Module:
        """The model to train, on CPU in float32; the same on every rank (the trainer seeds before calling)."""
        ...

    def param_groups(self, model: nn.Module, optim: OptimConfig) -> list[dict]:
        """AdamW parameter groups of the (possibly sharded) model, by parameter name; a group's own "lr" is its
        peak learning rate (the schedule scales every group alike)."""
        ...

    def export(self, model: nn.Module, config: RunConfig, sources: DataSources, target: Path, *,
               is_main: bool) -> None:
        """Write the end-of-run output at `target`; every rank calls it (collective under FSDP)."""
        ...


class ConfigModelRecipe:
    """`slimkv train`: the model the config's `model` section describes."""

    def __init__(self, config: RunConfig):
        self.name = config.model.arch

    def build_model(self, config: RunConfig, vocab_size: int) -> nn.Module:
        return build_model(config.model, vocab_size, seed=config.train.seed)

    def param_groups(self, model: nn.Module, optim: OptimConfig) -> list[dict]:
        return param_groups(model, optim.weight_decay)

    def export(self, model: nn.Module, config: RunConfig, sources: DataSources, target: Path, *,
               is_main: bool) -> None:
        export_model(model, config, sources, target, is_main=is_main)
