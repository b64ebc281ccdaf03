"""Model factory: `ModelConfig` -> a Hugging Face causal LM. Pluggable by arch name.

    register_model_builder("my_arch", lambda cfg, vocab_size: MyForCausalLM(...))

Builders return a `transformers.PreTrainedModel` whose forward takes `input_ids` and `labels` and returns `.loss`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import ModelConfig

ModelBuilder = Callable[[ModelConfig, int], nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}


def register_model_builder(arch: str, builder: ModelBuilder) -> None:
    _BUILDERS[arch] = builder


def llama_intermediate_size(hidden_size: int) -> int:
    # the Llama recipe: 8/3 d, rounded up to a multiple of 64
    return 64 * math.ceil(8 * hidden_size / 3 / 64)


def _build_llama(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    num_heads = cfg.num_heads or max(1, cfg.hidden_size // 64)
    if cfg.hidden_size % num_heads:
        raise ValueError(f"config field 'model.num_heads' ({num_heads}) must divide 'model.hidden_size' "
                         f"({cfg.hidden_size})")
    hf_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size or llama_intermediate_size(cfg.hidden_size),
        num_hidden_layers=cfg.resolved_num_layers(),
        num_attention_heads=num_heads,
        num_key_value_heads=cfg.num_key_value_heads or num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        rms_norm_eps=1e-5,
        use_cache=True,
        **cfg.extra,
    )
    return LlamaForCausalLM(hf_config)


def _build_rodimus(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    try:
        from ..models import RodimusConfig, RodimusForCausalLM
    except ImportError as err:
        raise ValueError(f"arch {cfg.arch!r} needs slimkv.models, which failed to import: {err}") from None
    if RodimusConfig is None:
        raise ValueError(f"arch {cfg.arch!r} needs slimkv.models.RodimusConfig, which is not available")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.resolved_num_layers(),
        block_type=cfg.arch,
        mem_size=cfg.mem_size,
        expand_ratio=cfg.expand_ratio,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        use_cache=True,
    )
    if cfg.arch in ("rodimus_plus", "gla"):
        kwargs.update(num_heads=cfg.num_heads or max(1, cfg.hidden_size // 128))
    if cfg.arch == "rodimus_plus":
        kwargs.update(window_size=cfg.window_size)
    kwargs.update(cfg.extra)
    return RodimusForCausalLM(RodimusConfig(**kwargs))


register_model_builder("llama", _build_llama)
register_model_builder("rodimus", _build_rodimus)
register_model_builder("rodimus_plus", _build_rodimus)
# the baselines share the Rodimus scaffolding (models/modeling.py block types)
register_model_builder("mamba2", _build_rodimus)
register_model_builder("gla", _build_rodimus)


def build_model(cfg: ModelConfig, vocab_size: int, seed: int = 0) -> nn.Module:
    """Build the model on CPU in float32 with a fixed seed, so every rank starts from identical weights."""
    if cfg.arch not in _BUILDERS:
        raise ValueError(f"config field 'model.arch' is {cfg.arch!r}; known: {', '.join(sorted(_BUILDERS))}")
    devices_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _BUILDERS[cfg.arch](cfg, vocab_size)
    finally:
        torch.random.set_rng_state(devices_state)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameter counts (tied weights counted once): total, embedding, and non-embedding."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    embedding = 0
    get_input = getattr(model, "get_input_embeddings", None)
    if get_input is not None and get_input() is not None:
        embedding += get_input().weight.numel()
    get_output = getattr(model, "get_output_embeddings", None)
    if get_output is not None and get_output() is not None:
        head = get_output().weight
        if get_input is None or head is not get_input().weight:
            embedding += head.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
