"""The model of a run: the `model` section (train/config.py ModelConfig) built through models/factory.py.

    model = build_model(config.model, vocab_size, seed=config.train.seed)

A new arch is added in models/factory.py (`register_arch`, or a block type in models/configuration.py), not here.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..models.factory import build_model as build_arch
from ..models.factory import count_parameters, llama_intermediate_size  # noqa: F401  (re-exported)
from .config import ModelConfig, RunConfig


def build_model(cfg: ModelConfig, vocab_size: int, seed: int = 0) -> nn.Module:
    """Build the model on the default device in float32 with a fixed seed, so every rank starts from identical
    weights (the global RNG is left as it was)."""
    config = cfg.model_config(vocab_size)
    devices_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_arch(cfg.arch, config)
    finally:
        torch.random.set_rng_state(devices_state)
    return model


def parameter_counts(config: RunConfig) -> dict[str, dict[str, int]]:
    """Layers and parameter counts (total, embedding, non-embedding) of every arch the run's `layers_by_arch`
    sizes (rodimus, rodimus_plus and llama when it names none), at the run's other sizes and vocabulary; built on
    the meta device (no memory, no init)."""
    data = config.data
    vocab_size = config.model.vocab_size or (data.synthetic_vocab_size if data.source == "synthetic"
                                             else data.tokenizer_vocab_size)
    counts = {}
    for arch in tuple(config.model.layers_by_arch) or ("rodimus", "rodimus_plus", "llama"):
        section = dataclasses.replace(config.model, arch=arch)
        with torch.device("meta"):
            counts[arch] = {"layers": section.resolved_num_layers(),
                            **count_parameters(build_model(section, vocab_size))}
    return counts
