"""Which Hugging Face decoder families RecurFormer handles, and their attention geometry.

A "unit" is one KV group: a key/value head and the query heads that share it (GQA); in MHA models a unit is one
head. Replacing a single query head saves no KV cache, so units are what gets scored, ranked and replaced.
"""
from __future__ import annotations

from dataclasses import dataclass

# Llama, Qwen2 and Mistral share one decoder layer: input_layernorm -> self_attn (q/k/v/o_proj, RoPE, GQA)
# -> residual -> post_attention_layernorm -> SwiGLU mlp -> residual. Qwen2 adds q/k/v biases, Mistral a window.
SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class AttentionGeometry:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def heads_per_unit(self) -> int:
        return self.num_heads // self.num_kv_heads

    def unit_of_head(self, head: int) -> int:
        return head // self.heads_per_unit

    def heads_of_unit(self, unit: int) -> list[int]:
        return list(range(unit * self.heads_per_unit, (unit + 1) * self.heads_per_unit))


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
