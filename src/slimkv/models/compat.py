"""What differs between the transformers releases slimkv supports (pyproject: >=5.17,<6).

transformers 5.24 renamed the generation cache from `past_key_values` to `cache`: the model outputs' field, the
keyword generate() passes to prepare_inputs_for_generation and forward, and GenerateDecoderOnlyOutput's field.
Everything in slimkv that builds or reads those goes through the names here, so both spellings work.
"""
from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

# the output field and keyword name that this transformers release's generate() reads and writes
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
CACHE_NAMES = ("cache", "past_key_values")


def pop_cache(kwargs: dict[str, Any], given: Any = None) -> Any:
    """The cache a caller passed under either name (removed from kwargs); `given` wins when it is not None."""
    found = [kwargs.pop(name) for name in CACHE_NAMES if name in kwargs]
    found = [c for c in found if c is not None]
    return given if given is not None else (found[0] if found else None)


def embed_with_cache(model: Any, input_ids: Any, inputs_embeds: Any, cache: Any, use_cache: bool | None,
                     kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The prologue every slimkv base model's forward shares -> (embeddings [B, T, d], cache or None).

    Exactly one of input_ids / inputs_embeds; the cache may come under either name; with use_cache and no cache an
    eval-mode model allocates its own (`model.allocate_cache(B, dtype, device)`), a training one runs without."""
    cache = pop_cache(kwargs, cache)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    x = model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    use_cache = model.config.use_cache if use_cache is None else use_cache
    if not use_cache:
        return x, None
    if cache is None and not model.training:
        cache = model.allocate_cache(x.shape[0], dtype=x.dtype, device=x.device)
    return x, cache


def with_cache(cache: Any) -> dict[str, Any]:
    """{CACHE_KEY: cache}: splat into a ModelOutput or a model-inputs dict."""
    return {CACHE_KEY: cache}


def output_cache(output: Any) -> Any:
    """The cache held by a model or generate() output, whichever name it uses."""
    for name in CACHE_NAMES:
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None
