"""Rodimus and Rodimus+ as Hugging Face models (one file for both block types).

    Rodimus layer:   X <- X + DDTS(RMSNorm(X))
    Rodimus+ layer:  X_s = X + DDTS(RMSNorm_1(X));  A = SWSKA(RMSNorm_2(X_s));  X <- X_s + FFN(RMSNorm_3(X_s + A))
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..layers.ddts import DDTSMixer
from ..layers.ffn import SwiGLU
from ..layers.gla import GLAMixer
from ..layers.mamba2 import Mamba2Mixer
from ..layers.norm import RMSNorm
from ..layers.swska import SharedKeyAttention
from .cache import RodimusCache
from .causal_lm import StatefulCausalLM
from .compat import embed_with_cache, with_cache
from .configuration import MAMBA2_HEAD_DIM, RodimusConfig
from .generation import FastGenerationMixin


class RodimusLayer(GradientCheckpointingLayer):
    """One block. Its recurrent mixer by block_type (DDTS for Rodimus/Rodimus+, Mamba2, GLA), then for Rodimus+ the
    SW-SKA two-hop branch and the FFN, for GLA a plain FFN branch."""

    def __init__(self, config: RodimusConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        kind = config.block_type
        self.plus = kind == "rodimus_plus"
        kernels = config.kernel_backend
        d = config.hidden_size
        self.mixer_norm = RMSNorm(d, config.rms_norm_eps, kernels)
        if kind in ("rodimus", "rodimus_plus"):
            self.mixer = DDTSMixer(
                d, config.expand_ratio, config.mem_size, config.conv_size, config.input_gate_low_rank,
                config.normalize_epsilon, config.rms_norm_eps, gla_backend=config.gla_backend,
                decode_backend=config.decode_backend, kernel_backend=kernels,
            )
        elif kind == "mamba2":
            self.mixer = Mamba2Mixer(d, config.inner_size // MAMBA2_HEAD_DIM, MAMBA2_HEAD_DIM, config.mem_size,
                                     conv_size=config.conv_size, use_gate=True, norm_eps=config.rms_norm_eps,
                                     gla_backend=config.gla_backend, decode_backend=config.decode_backend,
                                     kernel_backend=config.kernel_backend)
        else:
            self.mixer = GLAMixer(d, config.num_heads, config.mem_size, norm_eps=config.rms_norm_eps,
                                  gla_backend=config.gla_backend)
        self.attn = self.ffn = None
        if self.plus:
            self.attn_norm = RMSNorm(d, config.rms_norm_eps, kernels)
            self.attn = SharedKeyAttention(d, config.num_heads, config.window, config.rope_theta,
                                           config.rotary_dim, config.attn_backend, config.decode_backend)
        if kind in ("rodimus_plus", "gla"):
            self.ffn_norm = RMSNorm(d, config.rms_norm_eps, kernels)
            self.ffn = SwiGLU(d, config.ffn_size, kernels)

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
        carried = entry is not None and cache.seen_tokens > 0
        y, state = self.mixer(
            h,
            conv_state=entry.get("conv_state") if carried else None,
            ssm_state=entry["ssm_state"] if carried else None,
            padding_mask=padding_mask, use_cache=entry is not None,
        )
        if entry is not None:
            cache.update(self.layer_idx, **{name: value for name, value in zip(("conv_state", "ssm_state"), state)
                                            if value is not None})
        if self.attn is None and self.ffn is None:
            return residual, y
        if self.attn is None:
            # GLA block: X + GLA(norm X), then X + FFN(norm X)
            h, residual = self.ffn_norm.add(y, residual)
            return residual, self.ffn(h)
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
        y = self.mixer.step(h, entry.get("conv_state"), entry["ssm_state"])
        if self.attn is None and self.ffn is None:
            return residual, y
        if self.attn is None:
            h, residual = self.ffn_norm.add(y, residual)
            return residual, self.ffn(h)
        h, residual = self.attn_norm.add(y, residual)
        a = self.attn.step(h, positions, entry["key_ring"], entry["value_ring"], entry["ring_valid"], slot)
        # two-hop residual: norm(X_s + A) feeds the FFN, the stream stays X_s
        h, _ = self.ffn_norm.add(a, residual)
        return residual, self.ffn(h)


# layers that own their initialisation (a reset_parameters(std, residual_std, init) method)
OWN_INIT_LAYERS = (DDTSMixer, SharedKeyAttention, SwiGLU, Mamba2Mixer, GLAMixer, RMSNorm)


class RodimusPreTrainedModel(PreTrainedModel):
    config_class = RodimusConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RodimusLayer"]
    _is_stateful = True

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # transformers treats models defined outside its library as "custom code" and then marks any module without
        # parameters of its own (SwiGLU, SharedKeyAttention) initialised without calling _init_weights. Our init
        # goes through transformers.initialization, which already leaves loaded tensors alone: opt out.
        return super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Each slimkv layer initialises its own parameters (its `reset_parameters`, e.g. the official Rodimus init
        in layers/ddts.py); plain linears and embeddings get normal(initializer_range). transformers applies this
        children first, so a layer's own rule overrides the default of the linears inside it."""
        cfg = self.config
        std = cfg.initializer_range
        if isinstance(module, OWN_INIT_LAYERS):
            residual_std = std / math.sqrt(cfg.residual_branches * cfg.num_hidden_layers)
            module.reset_parameters(std=std, residual_std=residual_std, init=init)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)

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
            if leaf in ("bias", "D", "A_log", "dt_bias", "norm_weight") or "norm" in name.rsplit(".", 2)[-2]:
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
        x, past_key_values = embed_with_cache(self, input_ids, inputs_embeds, past_key_values, use_cache, kwargs)
        B, T = x.shape[:2]
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

        # the embedding enters as the first addend onto a zero stream (0 + x is exact), so no layer returns its own
        # input as an output: FSDP2 warns on such outputs, and the first add fuses with the first norm anyway
        x = x.float() if self.config.residual_in_fp32 and x.dtype != torch.float64 else x
        residual, addend = torch.zeros_like(x), x
        for layer in self.layers:
            residual, addend = layer(residual, addend, position_ids, padding_mask, past_key_values)
        if past_key_values is not None and T > 0:
            past_key_values.advance(T, position_ids[:, -1] + 1)
        x, _ = self.norm.add(addend, residual)
        return BaseModelOutputWithPast(last_hidden_state=x, **with_cache(past_key_values))


class RodimusForCausalLM(StatefulCausalLM, FastGenerationMixin, RodimusPreTrainedModel, GenerationMixin):
    """Rodimus / Rodimus+ (and the Mamba2 / GLA baselines) with the tied LM head (models/causal_lm.py)."""

    backbone_class = RodimusModel
