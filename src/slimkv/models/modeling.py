"""Rodimus and Rodimus+ as Hugging Face models (one file for both block types).

    Rodimus layer:   X <- X + DDTS(RMSNorm(X))
    Rodimus+ layer:  X_s = X + DDTS(RMSNorm_1(X));  A = SWSKA(RMSNorm_2(X_s));  X <- X_s + FFN(RMSNorm_3(X_s + A))
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..layers.ddts import DDTSMixer, ddts_gate_bias_init
from ..layers.ffn import SwiGLU
from ..layers.norm import RMSNorm
from ..layers.swska import SharedKeyAttention
from ..ops.cross_entropy import linear_cross_entropy
from .cache import RodimusCache
from .compat import CACHE_KEY, pop_cache, with_cache
from .configuration import RodimusConfig
from .generation import FastGenerationMixin


class RodimusLayer(GradientCheckpointingLayer):
    def __init__(self, config: RodimusConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.plus = config.block_type == "rodimus_plus"
        kernels = config.kernel_backend
        self.mixer_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, kernels)
        self.mixer = DDTSMixer(
            config.hidden_size, config.expand_ratio, config.mem_size, config.conv_size, config.input_gate_low_rank,
            config.normalize_epsilon, config.rms_norm_eps, gla_backend=config.gla_backend,
            decode_backend=config.decode_backend, kernel_backend=kernels,
        )
        if self.plus:
            self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, kernels)
            self.attn = SharedKeyAttention(config.hidden_size, config.num_heads, config.window, config.rope_theta,
                                           config.rotary_dim, config.attn_backend, config.decode_backend)
            self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, kernels)
            self.ffn = SwiGLU(config.hidden_size, config.ffn_size, kernels)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        shapes = self.mixer.state_shapes(batch_size)
        if self.plus:
            shapes.update(self.attn.state_shapes(batch_size))
        return shapes

    def forward(self, residual: torch.Tensor, addend: torch.Tensor | None, positions: torch.Tensor,
                padding_mask: torch.Tensor | None, cache: RodimusCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stream is carried as (residual, addend): this layer's input is residual + addend (addend None for the
        first layer) and it returns the same pair for its output, so every residual add runs fused with the norm
        that follows it (ops/norm add_rms_norm)."""
        entry = cache.layers[self.layer_idx] if cache is not None else None
        h, residual = self.mixer_norm.add(addend, residual)
        y, state = self.mixer(
            h,
            conv_state=entry["conv_state"] if entry and cache.seen_tokens else None,
            ssm_state=entry["ssm_state"] if entry and cache.seen_tokens else None,
            padding_mask=padding_mask, use_cache=entry is not None,
        )
        if entry is not None:
            cache.update(self.layer_idx, conv_state=state[0], ssm_state=state[1])
        if not self.plus:
            return residual, y
        h, residual = self.attn_norm.add(y, residual)
        ring = (entry["key_ring"], entry["value_ring"], entry["ring_valid"]) if entry else None
        a, ring = self.attn(h, positions, padding_mask, ring, seen=cache.seen_tokens if cache is not None else 0)
        if ring is not None:
            cache.update(self.layer_idx, key_ring=ring[0], value_ring=ring[1], ring_valid=ring[2])
        # two-hop residual: norm(X_s + A) feeds the FFN, the stream stays X_s
        h, _ = self.ffn_norm.add(a, residual)
        return residual, self.ffn(h)

    def step(self, residual: torch.Tensor, addend: torch.Tensor | None, entry: dict[str, torch.Tensor],
             positions: torch.Tensor, slot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode token. The stream is carried as (residual, addend) so each residual add is fused with the
        norm that follows it: this layer's input is residual + addend; returns the same pair for its output."""
        h, residual = self.mixer_norm.add(addend, residual)
        y = self.mixer.step(h, entry["conv_state"], entry["ssm_state"])
        if not self.plus:
            return residual, y
        h, residual = self.attn_norm.add(y, residual)
        a = self.attn.step(h, positions, entry["key_ring"], entry["value_ring"], entry["ring_valid"], slot)
        # two-hop residual: norm(X_s + A) feeds the FFN, the stream stays X_s
        h, _ = self.ffn_norm.add(a, residual)
        return residual, self.ffn(h)


class RodimusPreTrainedModel(PreTrainedModel):
    config_class = RodimusConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RodimusLayer"]
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Official initialisation (docs/rodimus.md section 4)."""
        cfg = self.config
        std = cfg.initializer_range
        if isinstance(module, nn.Linear):
            gain = getattr(module, "_init_xavier_gain", None)
            if gain is not None:
                init.xavier_uniform_(module.weight, gain=gain)
            elif getattr(module, "_is_residual_out", False):
                n_res = 3 if cfg.block_type == "rodimus_plus" else 1
                init.normal_(module.weight, mean=0.0, std=std / math.sqrt(n_res * cfg.num_hidden_layers))
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                m = getattr(module, "_ddts_gate_bias", None)
                if m is not None:
                    init.copy_(module.bias, ddts_gate_bias_init(m).to(module.bias))
                else:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Conv1d):
            # PyTorch's default Conv1d initialisation
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight.shape[1] * module.weight.shape[2]
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, DDTSMixer):
            init.ones_(module.D)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, plus auto_map and a two-line shim importing the installed slimkv (slimkv/hub.py), so
        code that never imported slimkv (lm_eval --model hf, trust_remote_code=True) loads the folder."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            from ..hub import add_remote_code

            add_remote_code(save_directory)
        return out

    def no_weight_decay_names(self) -> set[str]:
        """Parameters the official recipe excludes from weight decay: biases, norm weights, D, and the embedding
        when it is NOT tied (a tied embedding is also the LM head's weight, which is decayed)."""
        names = set()
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or leaf == "D" or "norm" in name.rsplit(".", 2)[-2]:
                names.add(name)
            elif "embed_tokens" in name and not self.config.tie_word_embeddings:
                names.add(name)
        return names


class RodimusModel(RodimusPreTrainedModel):
    def __init__(self, config: RodimusConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.layers = nn.ModuleList(RodimusLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.kernel_backend)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                       device: torch.device | None = None) -> RodimusCache:
        p = self.embed_tokens.weight
        return RodimusCache([layer.state_shapes(batch_size) for layer in self.layers], dtype or p.dtype,
                            device or p.device, batch_size)

    @torch.no_grad()
    def decode_step(self, input_ids: torch.LongTensor, cache: RodimusCache,
                    positions: torch.LongTensor | None = None) -> torch.Tensor:
        """One token per row through every layer: input_ids [B] -> final-normed hidden states [B, d].

        Graph-capturable: reads positions (default cache.next_position) and the ring slot from device tensors,
        updates the cache in place, and advances cache.seen / cache.next_position on the device. The host counter
        cache.seen_tokens is the caller's to advance (a graph replay cannot).
        """
        x = self.embed_tokens(input_ids)
        residual = x.float() if self.config.residual_in_fp32 and x.dtype != torch.float64 else x
        positions = cache.next_position if positions is None else positions
        slot = None
        if self.config.block_type == "rodimus_plus":
            slot = torch.remainder(cache.seen, self.layers[0].attn.ring_slots)
        addend = None
        for layer in self.layers:
            residual, addend = layer.step(residual, addend, cache.layers[layer.layer_idx], positions, slot)
        h, _ = self.norm.add(addend, residual)
        cache.seen.add_(1)
        cache.next_position.copy_(positions + 1)
        return h

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: RodimusCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        past_key_values = pop_cache(kwargs, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and not self.training:
            past_key_values = self.allocate_cache(B, dtype=x.dtype, device=x.device)
        if not use_cache:
            past_key_values = None
        seen = past_key_values.seen_tokens if past_key_values is not None else 0

        padding_mask = None
        if attention_mask is not None:
            if attention_mask.shape[-1] not in (T, seen + T):
                raise ValueError(f"attention_mask has length {attention_mask.shape[-1]}; expected {T} or {seen + T}")
            # only this call's tokens can be padding here: earlier ones are already folded into the cache
            if not bool(attention_mask[:, -T:].all()):
                padding_mask = attention_mask[:, -T:].bool()
        if position_ids is None:
            # RoPE positions count real tokens: from the full mask, or continuing each row's count in the cache
            start = past_key_values.next_position[:, None] if past_key_values is not None and seen > 0 else 0
            if attention_mask is not None and attention_mask.shape[-1] == seen + T:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
            elif attention_mask is not None:
                position_ids = start + (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            else:
                position_ids = start + torch.arange(T, device=x.device).expand(B, T)
        if seen == 0 and T > self.config.max_position_embeddings:
            # a cache may stream past it (RoPE in a window only sees relative positions); one forward may not
            raise ValueError(f"sequence of {T} tokens is longer than max_position_embeddings="
                             f"{self.config.max_position_embeddings}")

        if seen > 0 and T == 1 and inputs_embeds is None and padding_mask is None:
            # a decode token: the fused one-token step (the same one generate() replays from a CUDA graph)
            h = self.decode_step(input_ids[:, 0], past_key_values, position_ids[:, 0])
            past_key_values.seen_tokens += 1
            return BaseModelOutputWithPast(last_hidden_state=h[:, None], **with_cache(past_key_values))

        residual = x.float() if self.config.residual_in_fp32 and x.dtype != torch.float64 else x
        addend = None
        for layer in self.layers:
            residual, addend = layer(residual, addend, position_ids, padding_mask, past_key_values)
        if past_key_values is not None and T > 0:
            past_key_values.advance(T, position_ids[:, -1] + 1)
        x, _ = self.norm.add(addend, residual)
        return BaseModelOutputWithPast(last_hidden_state=x, **with_cache(past_key_values))


class RodimusForCausalLM(FastGenerationMixin, RodimusPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RodimusConfig):
        super().__init__(config)
        self.model = RodimusModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # the recurrent cache is created by the model itself, not as a transformers DynamicCache
        return False

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                       device: torch.device | None = None) -> RodimusCache:
        return self.model.allocate_cache(batch_size, dtype, device)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, use_cache=True, **kwargs):
        # transformers >= 5.24 passes the cache as `cache`, older releases as `past_key_values` (models/compat.py)
        past_key_values = pop_cache(kwargs, past_key_values)
        if past_key_values is not None and past_key_values.seen_tokens > 0:
            # the state already holds everything before the last token
            input_ids = input_ids[:, past_key_values.seen_tokens:]
            inputs_embeds = None
        inputs = {"attention_mask": attention_mask, CACHE_KEY: past_key_values, "use_cache": use_cache}
        if inputs_embeds is not None:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: RodimusCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        targets: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """labels: Hugging Face convention (same length as the input, shifted inside; logits returned too).
        targets: the next token of every input position, already shifted ([B, T], -100 = ignore): the loss runs as
        a chunked linear cross-entropy that never materialises the [B, T, V] logits (ops/cross_entropy), and no
        logits are returned. The project's trainer uses targets."""
        past_key_values = pop_cache(kwargs, past_key_values)
        if labels is not None or targets is not None:
            use_cache = False
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        h = out.last_hidden_state
        if targets is not None:
            loss = linear_cross_entropy(h, self.lm_head.weight, targets, backend=self.config.kernel_backend)
            return CausalLMOutputWithPast(loss=loss, logits=None)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h.to(self.lm_head.weight.dtype))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **with_cache(getattr(out, CACHE_KEY)))
