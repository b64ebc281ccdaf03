"""RecurFormerConfig: a pretrained Llama / Qwen2 / Mistral config plus which KV units each layer gives to a branch."""
from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from ...layers.branches import branch_names

# fields of the source config mirrored at the top level, where generation and tooling look for them
MIRRORED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "max_position_embeddings", "initializer_range", "bos_token_id", "eos_token_id",
            "pad_token_id")


class RecurFormerConfig(PretrainedConfig):
    r"""
    Args:
        base_config: the source model's config as a dict (`config.to_dict()`), model_type included.
        replaced_units: per layer, the KV units (KV head indices) served by the branch; the others stay attention.
        mixer: the branch (layers/branches.py): "mamba2", "ddts", "window" or "window_mamba2".
        mixer_kwargs: the branch's options (e.g. {"state_size": 64}, {"window": 64, "sinks": 4}).
        attn_backend / decode_backend / gla_backend: ops backends ("auto": Triton / Flex on CUDA, PyTorch elsewhere).
    """

    model_type = "recurformer"

    def __init__(self, base_config: dict | None = None, replaced_units: list[list[int]] | None = None,
                 mixer: str = "mamba2", mixer_kwargs: dict | None = None, attn_backend: str = "auto",
                 decode_backend: str = "auto", gla_backend: str = "auto", **kwargs):
        base_config = dict(base_config or {})
        self.base_config = base_config
        self.mixer = mixer
        self.mixer_kwargs = dict(mixer_kwargs or {})
        self.attn_backend, self.decode_backend, self.gla_backend = attn_backend, decode_backend, gla_backend
        self.use_cache = bool(kwargs.pop("use_cache", base_config.get("use_cache", True)))
        num_layers = base_config.get("num_hidden_layers", 0)
        self.replaced_units = [sorted(int(u) for u in units)
                               for units in (replaced_units or [[] for _ in range(num_layers)])]
        for key in MIRRORED:
            if key in base_config and key not in kwargs:
                kwargs[key] = base_config[key]
        kwargs.setdefault("tie_word_embeddings", base_config.get("tie_word_embeddings", False))
        super().__init__(**kwargs)
        if base_config:
            if mixer not in branch_names():
                raise ValueError(f"unknown mixer {mixer!r}; choose one of {', '.join(branch_names())}")
            if len(self.replaced_units) != num_layers:
                raise ValueError(f"replaced_units has {len(self.replaced_units)} layers; the model has {num_layers}")

    def source_config(self) -> PretrainedConfig:
        data = dict(self.base_config)
        return AutoConfig.for_model(data.pop("model_type"), **data)

    @property
    def num_replaced(self) -> int:
        return sum(len(units) for units in self.replaced_units)
