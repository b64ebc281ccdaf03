"""Which Hugging Face decoder families RecurFormer converts, and what it reads from their configs.

Llama, Qwen2 and Mistral share one decoder layer: input_layernorm -> self_attn (q/k/v/o_proj, RoPE, GQA) ->
residual -> post_attention_layernorm -> SwiGLU mlp -> residual. Qwen2 adds q/k/v biases, Mistral a sliding window.
A converted model keeps the family's own RMSNorm and MLP classes, so their math is the source model's.
"""
from __future__ import annotations

import importlib

import torch

from ...layers.hybrid_attention import AttentionGeometry

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
_CLASS_PREFIX = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
# RoPE variants whose frequencies are a fixed table (the decode kernels take one) and need no output scaling
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


def check_family(config) -> str:
    """The config's model_type if RecurFormer supports it, else a ValueError naming the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"unsupported architecture {model_type!r}: RecurFormer handles the Hugging Face families "
            f"{', '.join(SUPPORTED_FAMILIES)} (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"
        )
    return model_type


def attention_geometry(config) -> AttentionGeometry:
    num_heads = config.num_attention_heads
    num_kv = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    if num_heads % num_kv:
        raise ValueError(f"query heads ({num_heads}) are not a multiple of KV heads ({num_kv})")
    return AttentionGeometry(config.num_hidden_layers, num_heads, num_kv, head_dim, config.hidden_size)


def _family_module(config):
    model_type = check_family(config)
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}"), _CLASS_PREFIX[model_type]


def family_classes(config) -> tuple[type, type]:
    """(RMSNorm class, MLP class) of the source family; both are built as `cls(...)` like the family builds them."""
    module, prefix = _family_module(config)
    return getattr(module, f"{prefix}RMSNorm"), getattr(module, f"{prefix}MLP")


def rope_frequencies(config) -> torch.Tensor:
    """[D / 2] float32 RoPE frequencies exactly as the family's own rotary embedding computes them."""
    module, prefix = _family_module(config)
    # on the CPU even while from_pretrained builds the model on the meta device
    with torch.device("cpu"):
        rotary = getattr(module, f"{prefix}RotaryEmbedding")(config)
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    if rope_type not in STATIC_ROPE_TYPES or float(rotary.attention_scaling) != 1.0:
        raise ValueError(f"RoPE type {rope_type!r} is not supported by RecurFormer's cache (it needs a fixed "
                         f"frequency table without output scaling: {', '.join(STATIC_ROPE_TYPES)})")
    return rotary.inv_freq.float().cpu()


def attention_biases(config) -> tuple[bool, bool]:
    """(q/k/v projections have biases, o_proj has a bias)."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def source_window(config, layer: int) -> int | None:
    """Previous tokens each query of the source model's layer `layer` sees (HF: key j is visible to query i when
    i - j < sliding_window), None for full attention."""
    if not getattr(config, "use_sliding_window", True):
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types and layer_types[layer] != "sliding_attention":
        return None
    sliding = getattr(config, "sliding_window", None)
    return None if sliding is None else int(sliding) - 1
