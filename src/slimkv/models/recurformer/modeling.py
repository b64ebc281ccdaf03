"""RecurFormer models: a pretrained Llama / Qwen2 / Mistral decoder whose replaced KV units run a branch.

legend: B batch, T time, d model width, V vocabulary, D head dim

    x <- x + HybridAttention(RMSNorm(x))        kept units: RoPE attention; replaced units: a branch (layers/)
    x <- x + MLP(RMSNorm(x))                    the family's own RMSNorm and MLP classes, pretrained weights

Parameter names are the source model's (kept q/k/v rows are row slices of the originals; o_proj, norms, MLPs and
embeddings are the pretrained tensors) plus `self_attn.branch.*`, so a converted checkpoint reads like the original.

Cache: the project's preallocated state cache (models/cache.py), per layer the kept units' KV slots
(key_ring/value_ring/ring_valid: a static KV cache of `capacity` slots, or the source's sliding window) and the
branch's constant-size state. `decode_step` runs one token per row through every layer, updating it in place with
no host syncs, so models/generation.py (FastGenerationMixin) replays it from CUDA graphs.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from ...layers.hybrid_attention import HybridAttention
from ...ops.rope import rope_cos_sin
from ..cache import RodimusCache
from ..causal_lm import StatefulCausalLM
from ..compat import embed_with_cache, with_cache
from ..generation import FastGenerationMixin
from .configuration import RecurFormerConfig
from .families import (attention_biases, attention_geometry, check_family, family_classes, rope_frequencies,
                       source_window)

# the smallest static capacity generate() allocates; capacities are powers of two so decode graphs are reused
MIN_CACHE_CAPACITY = 256


class RecurFormerLayer(GradientCheckpointingLayer):
    def __init__(self, config: RecurFormerConfig, source, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        norm, mlp = family_classes(source)
        qkv_bias, o_bias = attention_biases(source)
        self.input_layernorm = norm(source.hidden_size, eps=source.rms_norm_eps)
        self.self_attn = HybridAttention(attention_geometry(source), config.replaced_units[layer_idx], config.mixer,
                                         config.mixer_kwargs, qkv_bias, o_bias, source_window(source, layer_idx),
                                         config.attn_backend, config.decode_backend, config.gla_backend)
        self.post_attention_layernorm = norm(source.hidden_size, eps=source.rms_norm_eps)
        self.mlp = mlp(source)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
                padding_mask: torch.Tensor | None = None, cache: RodimusCache | None = None) -> torch.Tensor:
        entry = cache.layers[self.layer_idx] if cache is not None else None
        seen = cache.seen_tokens if cache is not None else 0
        x = x + self.self_attn(self.input_layernorm(x), rope, positions, padding_mask, entry, seen)
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(self, x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, entry: dict[str, torch.Tensor],
             seen: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn.step(self.input_layernorm(x), positions, inv_freq, entry, seen)
        return x + self.mlp(self.post_attention_layernorm(x))


class RecurFormerPreTrainedModel(PreTrainedModel):
    config_class = RecurFormerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RecurFormerLayer"]
    _is_stateful = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save plus the remote-code shim (slimkv/hub.py), as for Rodimus models."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            from ...hub import add_remote_code

            add_remote_code(save_directory)
        return out


class RecurFormerModel(RecurFormerPreTrainedModel):
    def __init__(self, config: RecurFormerConfig):
        super().__init__(config)
        source = config.source_config()
        check_family(source)
        self.embed_tokens = nn.Embedding(source.vocab_size, source.hidden_size, source.pad_token_id)
        self.layers = nn.ModuleList(RecurFormerLayer(config, source, i) for i in range(source.num_hidden_layers))
        self.norm = family_classes(source)[0](source.hidden_size, eps=source.rms_norm_eps)
        # RoPE frequencies as the family computes them; plain attributes (model.to(bf16) must not round them),
        # one copy per device made on first use
        self._inv_freq = {torch.device("cpu"): rope_frequencies(source)}
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._inv_freq:
            self._inv_freq[device] = self._inv_freq[torch.device("cpu")].to(device)
        return self._inv_freq[device]

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None,
                       capacity: int | None = None) -> RodimusCache:
        """Zeroed state for `batch_size` rows; the kept units get `capacity` KV slots per row (default: the
        position limit), the branches their constant state."""
        capacity = int(capacity or self.config.max_position_embeddings)
        p = self.embed_tokens.weight
        shapes = [layer.self_attn.state_shapes(batch_size, capacity) for layer in self.layers]
        return RodimusCache(shapes, dtype or p.dtype, device or p.device, batch_size)

    def room(self, cache: RodimusCache) -> int | None:
        """Tokens the cache can still take (None: unbounded, no layer keeps a full-attention KV cache)."""
        for layer in self.layers:
            attn = layer.self_attn
            if attn.kept_units and attn.window is None:
                return cache.layers[layer.layer_idx]["key_ring"].shape[1] - cache.seen_tokens
        return None

    @torch.no_grad()
    def decode_step(self, input_ids: torch.LongTensor, cache: RodimusCache,
                    positions: torch.LongTensor | None = None) -> torch.Tensor:
        """One token per row through every layer: input_ids [B] -> final-normed hidden states [B, d].

        Graph-capturable: positions (default cache.next_position) and the slot counter cache.seen are device
        tensors, the cache is updated in place, cache.seen / cache.next_position advance on the device. The host
        counter cache.seen_tokens is the caller's to advance (a graph replay cannot)."""
        x = self.embed_tokens(input_ids)
        positions = cache.next_position if positions is None else positions
        inv_freq = self.inv_freq(x.device)
        for layer in self.layers:
            x = layer.step(x, positions, inv_freq, cache.layers[layer.layer_idx], cache.seen)
        cache.seen.add_(1)
        cache.next_position.copy_(positions + 1)
        return self.norm(x)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: RodimusCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        """attention_mask covers this call's tokens [B, T] or everything so far [B, seen + T] (1 = real token;
        left padding does not shift RoPE positions). With a cache the tokens continue it."""
        x, cache = embed_with_cache(self, input_ids, inputs_embeds, past_key_values, use_cache, kwargs)
        B, T = x.shape[:2]
        seen = cache.seen_tokens if cache is not None else 0
        if seen == 0 and T > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {T} tokens is longer than max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        room = self.room(cache) if cache is not None else None
        if room is not None and room < T:
            raise ValueError(f"the cache holds {seen} tokens and has room for {room} more; {T} do not fit "
                             "(allocate_cache(..., capacity=...) sets its size)")
        padding_mask, position_ids = self._positions(attention_mask, position_ids, cache, seen, B, T, x.device)
        if seen > 0 and T == 1 and inputs_embeds is None and padding_mask is None:
            # a decode token: the same step generate() replays from a CUDA graph
            h = self.decode_step(input_ids[:, 0], cache, position_ids[:, 0])
            cache.seen_tokens += 1
            return BaseModelOutputWithPast(last_hidden_state=h[:, None], **with_cache(cache))
        rope = rope_cos_sin(position_ids, 0, inv_freq=self.inv_freq(x.device),
                            dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        for layer in self.layers:
            x = layer(x, rope, position_ids, padding_mask, cache)
        if cache is not None and T > 0:
            cache.advance(T, position_ids[:, -1] + 1)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), **with_cache(cache))

    @staticmethod
    def _positions(attention_mask, position_ids, cache, seen: int, B: int, T: int, device):
        """(padding mask of this call's tokens, None when all are real; RoPE positions [B, T])."""
        if attention_mask is not None and attention_mask.shape[-1] not in (T, seen + T):
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens; expected {T} or {seen + T}")
        mine = None if attention_mask is None else attention_mask[:, -T:].bool()
        if position_ids is None:
            if attention_mask is not None and attention_mask.shape[-1] == seen + T:
                # real tokens counted from the start of each row
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
            else:
                offset = cache.next_position[:, None] if seen else 0
                count = mine.long().cumsum(-1) - 1 if mine is not None else torch.arange(T, device=device)
                position_ids = offset + count.clamp_min(0).expand(B, T)
        if mine is not None and bool(mine.all()):
            mine = None
        return mine, position_ids


class RecurFormerForCausalLM(StatefulCausalLM, FastGenerationMixin, RecurFormerPreTrainedModel, GenerationMixin):
    """A converted model with the tied LM head (models/causal_lm.py); its cache adds the kept units' KV slots."""

    backbone_class = RecurFormerModel

    def cache_capacity(self, total_tokens: int) -> int:
        """KV slots generate() allocates for prompt + new tokens: a power of two (graphs are kept per capacity)."""
        capacity = max(MIN_CACHE_CAPACITY, 1 << (max(total_tokens, 1) - 1).bit_length())
        return min(capacity, max(total_tokens, self.config.max_position_embeddings))
