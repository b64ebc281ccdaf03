"""Inference-memory accounting: bytes of a cache as allocated, and of a Transformer KV cache at T tokens."""
from __future__ import annotations

import torch

from .cache import RodimusCache


def cache_nbytes(cache) -> int:
    """Bytes held by a RodimusCache or a transformers Cache (keys + values of every layer)."""
    if isinstance(cache, RodimusCache):
        return cache.nbytes()
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def transformer_kv_bytes(num_layers: int, num_kv_heads: int, head_dim: int, tokens: int, batch: int = 1,
                         bytes_per_element: int = 2) -> int:
    """A full-attention KV cache: 2 (K and V) x layers x KV heads x head dim x tokens."""
    return 2 * num_layers * num_kv_heads * head_dim * tokens * batch * bytes_per_element


def rodimus_cache_bytes(model, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of the preallocated Rodimus/Rodimus+ cache; independent of the number of tokens by construction."""
    return model.allocate_cache(batch, dtype=dtype, device=torch.device("meta")).nbytes()


def inference_state_bytes(model, tokens: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
    """Decode-cache bytes after `tokens` tokens: a slimkv model's preallocated cache (constant in `tokens`), or a
    full-attention Transformer's KV cache from its config (grows with `tokens`)."""
    if hasattr(model, "allocate_cache"):
        return rodimus_cache_bytes(model, batch, dtype)
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return transformer_kv_bytes(config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads,
                                head_dim, tokens, batch, torch.empty((), dtype=dtype).element_size())
