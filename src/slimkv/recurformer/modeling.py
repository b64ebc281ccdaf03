"""Converted RecurFormer models: a Llama/Qwen2/Mistral decoder whose replaced KV units run a recurrent branch.

legend: B batch, T time, d model width, H query heads, Hk KV heads, D head dim, R replaced query heads

Head-slot design (shared/spec/recurformer.md): inside each attention layer the kept units run ordinary RoPE
attention over their own KV cache; one branch per layer reads the same normed input as q/k/v and writes the
outputs of the replaced query heads into their slots before the ORIGINAL o_proj. Kept q/k/v rows, o_proj, norms,
MLPs and embeddings are the pretrained tensors, untouched. Parameter names follow the HF source model (kept q/k/v
weights are row slices of the originals), so a converted checkpoint reads like the original one plus `branch.*`.

`import slimkv.recurformer.modeling` registers RecurFormerConfig ("recurformer") with AutoConfig and
RecurFormerForCausalLM with AutoModelForCausalLM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..layers.mamba2 import Mamba2Mixer
from ..models.compat import CACHE_KEY, pop_cache, with_cache
from ..ops.window_attn import window_attention, window_decode
from .cache import RecurFormerCache
from .families import attention_geometry, check_family

MIXERS = ("mamba2", "ddts", "window")


class RecurFormerConfig(PretrainedConfig):
    """The source model's config (`base_config`) plus which KV units each layer replaces and with what."""

    model_type = "recurformer"

    def __init__(self, base_config: dict | None = None, replaced_units: list[list[int]] | None = None,
                 mixer: str = "mamba2", mixer_kwargs: dict | None = None, **kwargs):
        base_config = dict(base_config or {})
        self.base_config = base_config
        self.mixer = mixer
        self.mixer_kwargs = dict(mixer_kwargs or {})
        num_layers = base_config.get("num_hidden_layers", 0)
        self.replaced_units = [list(u) for u in (replaced_units or [[] for _ in range(num_layers)])]
        # mirror the fields generation and tooling read from a top-level config
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
            if key in base_config and key not in kwargs:
                kwargs[key] = base_config[key]
        kwargs.setdefault("tie_word_embeddings", base_config.get("tie_word_embeddings", False))
        super().__init__(**kwargs)
        if base_config:
            if mixer not in MIXERS:
                raise ValueError(f"unknown mixer {mixer!r}; choose one of {MIXERS}")
            if len(self.replaced_units) != num_layers:
                raise ValueError(f"replaced_units has {len(self.replaced_units)} layers; the model has {num_layers}")

    def source_config(self) -> PretrainedConfig:
        data = dict(self.base_config)
        return AutoConfig.for_model(data.pop("model_type"), **data)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos, sin [B, T, D]: HF's half-split rotation, same operation order as HF."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(2) + rotated * sin.unsqueeze(2)


def sink_window_attention(q, k, v, positions, valid, window: int, sinks: int, scale: float, chunk: int = 256):
    """Streaming-head attention: query i sees key j <= i when j is real and (pos_j < sinks or pos_i - pos_j <= window).

    q [B, T, H, D], k/v [B, T, Hk, D], positions [B, T] long, valid [B, T] bool -> [B, T, H, D]. Dense per query chunk.
    """
    B, T, H, D = q.shape
    k = k.repeat_interleave(H // k.shape[2], dim=2)
    v = v.repeat_interleave(H // v.shape[2], dim=2)
    out = torch.empty_like(q)
    slot = torch.arange(T, device=q.device)
    for start in range(0, T, chunk):
        stop = min(start + chunk, T)
        scores = torch.einsum("bihd,bjhd->bhij", q[:, start:stop].float(), k[:, :stop].float()) * scale
        pos_i, pos_j = positions[:, start:stop, None], positions[:, None, :stop]
        seen = (slot[start:stop, None] >= slot[None, :stop])[None] & valid[:, None, :stop]
        seen = seen & ((pos_j < sinks) | (pos_i - pos_j <= window))
        probs = scores.masked_fill(~seen[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
        out[:, start:stop] = torch.einsum("bhij,bjhd->bihd", probs, v[:, :stop].float()).to(q.dtype)
    return out


class WindowBranch(nn.Module):
    """The replaced units keep their own (pretrained) q/k/v rows but see only sinks + a recent window."""

    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, bias, window=64, sinks=4):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window, self.sinks = window, sinks
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)

    def forward(self, h, cos, sin, positions, valid, scale, layer_cache):
        B, T, _ = h.shape
        q = apply_rope(self.q_proj(h).unflatten(-1, (self.num_heads, self.head_dim)), cos, sin)
        k = apply_rope(self.k_proj(h).unflatten(-1, (self.num_kv_heads, self.head_dim)), cos, sin)
        v = self.v_proj(h).unflatten(-1, (self.num_kv_heads, self.head_dim))
        cur_pos, cur_valid = positions[:, -T:], valid[:, -T:]
        if layer_cache is not None and "recent_k" in layer_cache:
            return self._decode(q, k, v, cur_pos, cur_valid, scale, layer_cache)
        out = sink_window_attention(q, k, v, cur_pos, cur_valid, self.window, self.sinks, scale)
        if layer_cache is not None:
            # sinks: the first `sinks` real tokens of each sample (real slots first, stable order)
            order = torch.sort((~cur_valid).to(torch.int8), dim=1, stable=True).indices[:, : self.sinks]
            n_real = cur_valid.sum(1, keepdim=True)
            fill = self.sinks - order.shape[1]
            gather = lambda t: F.pad(t.gather(1, order[..., None, None].expand(-1, -1, *t.shape[2:])),
                                     (0, 0, 0, 0, 0, fill))
            layer_cache["sink_k"], layer_cache["sink_v"] = gather(k), gather(v)
            layer_cache["sink_valid"] = torch.arange(self.sinks, device=h.device)[None] < n_real
            keep = self.window + 1
            pad = max(0, keep - T)
            layer_cache["recent_k"] = F.pad(k[:, -keep:], (0, 0, 0, 0, pad, 0))
            layer_cache["recent_v"] = F.pad(v[:, -keep:], (0, 0, 0, 0, pad, 0))
            layer_cache["recent_valid"] = F.pad(cur_valid[:, -keep:], (pad, 0), value=False)
            layer_cache["recent_pos"] = F.pad(cur_pos[:, -keep:], (pad, 0), value=-1)
        return out

    def _decode(self, q, k, v, pos, valid, scale, c):
        if q.shape[1] != 1:
            raise ValueError("a RecurFormer cache continues one token at a time; prefill with an empty cache")
        for name, new in (("recent_k", k), ("recent_v", v), ("recent_valid", valid), ("recent_pos", pos)):
            c[name] = torch.cat((c[name][:, 1:], new), dim=1)
        # a token whose position is below `sinks` (prompt shorter than the sinks) becomes a sink
        into_sink = (torch.arange(self.sinks, device=q.device)[None] == pos) & valid
        c["sink_k"] = torch.where(into_sink[..., None, None], k, c["sink_k"])
        c["sink_v"] = torch.where(into_sink[..., None, None], v, c["sink_v"])
        c["sink_valid"] = c["sink_valid"] | into_sink
        recent_ok = c["recent_valid"] & (c["recent_pos"] >= self.sinks) & (pos - c["recent_pos"] <= self.window)
        keys = torch.cat((c["sink_k"], c["recent_k"]), dim=1)
        values = torch.cat((c["sink_v"], c["recent_v"]), dim=1)
        out = window_decode(q[:, 0], keys, values, torch.cat((c["sink_valid"], recent_ok), dim=1), scale)
        return out.unsqueeze(1)


class HybridAttention(nn.Module):
    """Kept KV units: RoPE attention with their pretrained rows. Replaced units: one recurrent branch per layer."""

    def __init__(self, config: PretrainedConfig, replaced_units: list[int], mixer: str, mixer_kwargs: dict):
        super().__init__()
        geo = attention_geometry(config)
        self.geo, self.mixer = geo, mixer
        self.replaced_units = sorted(replaced_units)
        self.kept_units = [u for u in range(geo.num_kv_heads) if u not in self.replaced_units]
        self.kept_heads = [h for u in self.kept_units for h in geo.heads_of_unit(u)]
        self.replaced_heads = [h for u in self.replaced_units for h in geo.heads_of_unit(u)]
        # slot order of [kept heads | replaced heads] -> original head order, for o_proj
        order = self.kept_heads + self.replaced_heads
        # a plain list, not a buffer: from_pretrained builds modules on the meta device and would lose it
        self.slot_order = [order.index(h) for h in range(geo.num_heads)]
        self.scaling = geo.head_dim ** -0.5
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        sliding = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        # HF's window: key j visible to query i when i - j < sliding_window, i.e. sliding_window - 1 previous tokens
        self.window = None if sliding is None else int(sliding) - 1
        d, D = geo.hidden_size, geo.head_dim
        n_kept, n_rep = len(self.kept_units), geo.heads_per_unit
        if n_kept:
            self.q_proj = nn.Linear(d, n_kept * n_rep * D, bias=bias)
            self.k_proj = nn.Linear(d, n_kept * D, bias=bias)
            self.v_proj = nn.Linear(d, n_kept * D, bias=bias)
        self.o_proj = nn.Linear(geo.num_heads * D, d, bias=False)
        self.branch = self._build_branch(config, bias, mixer_kwargs) if self.replaced_units else None

    def _build_branch(self, config, bias, kw):
        geo, R, G = self.geo, len(self.replaced_heads), len(self.replaced_units)
        if self.mixer == "mamba2":
            return Mamba2Mixer(
                geo.hidden_size, R, geo.head_dim, state_size=kw.get("state_size") or geo.head_dim,
                num_b_groups=G, num_c_groups=R, conv_size=kw.get("conv_size", 4), out_size=R * geo.head_dim,
                use_gate=kw.get("use_gate", False), conv_activation=kw.get("conv_activation", True),
                proj_bias=kw.get("proj_bias", bias),
            )
        if self.mixer == "ddts":
            from ..layers.ddts import DDTSMixer

            # inner width = the replaced heads' output width, so the branch costs about what the heads did
            return DDTSMixer(geo.hidden_size, expand_ratio=R * geo.head_dim / geo.hidden_size,
                             mem_size=kw.get("mem_size", 64), conv_size=kw.get("conv_size", 4),
                             out_size=R * geo.head_dim)
        window = kw.get("window", 64)
        if self.window is not None:
            # never let a replaced head see further back than the source model's own sliding window
            window = min(window, self.window)
        return WindowBranch(geo.hidden_size, R, G, geo.head_dim, bias, window, kw.get("sinks", 4))

    def forward(self, h, cos, sin, positions, valid, layer_cache=None):
        """h [B, T, d] (normed); positions/valid [B, S_total]; layer_cache: this layer's dict or None."""
        B, T, _ = h.shape
        geo, D = self.geo, self.geo.head_dim
        parts = []
        if self.kept_units:
            q = apply_rope(self.q_proj(h).unflatten(-1, (-1, D)), cos, sin)
            k = apply_rope(self.k_proj(h).unflatten(-1, (-1, D)), cos, sin)
            v = self.v_proj(h).unflatten(-1, (-1, D))
            if layer_cache is not None and "k" in layer_cache:
                if T != 1:
                    raise ValueError("a RecurFormer cache continues one token at a time; prefill with an empty cache")
                layer_cache["k"] = torch.cat((layer_cache["k"], k), dim=1)
                layer_cache["v"] = torch.cat((layer_cache["v"], v), dim=1)
                seen = valid.clone()
                if self.window is not None:
                    seen &= positions[:, -1:] - positions <= self.window
                parts.append(window_decode(q[:, 0], layer_cache["k"], layer_cache["v"], seen, self.scaling)[:, None])
            else:
                parts.append(window_attention(q, k, v, self.window, self.scaling, valid[:, -T:]))
                if layer_cache is not None:
                    layer_cache["k"], layer_cache["v"] = k, v
        if self.branch is not None:
            parts.append(self._run_branch(h, cos, sin, positions, valid, layer_cache))
        heads = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        heads = heads.index_select(2, torch.tensor(self.slot_order, device=heads.device))
        return self.o_proj(heads.flatten(2))

    def _run_branch(self, h, cos, sin, positions, valid, layer_cache):
        B, T, _ = h.shape
        if self.mixer == "window":
            return self.branch(h, cos, sin, positions, valid, self.scaling, layer_cache)
        conv_state = ssm_state = None
        if layer_cache is not None and "ssm_state" in layer_cache:
            conv_state, ssm_state = layer_cache["conv_state"], layer_cache["ssm_state"]
        y, state = self.branch(h, conv_state, ssm_state, padding_mask=valid[:, -T:],
                               use_cache=layer_cache is not None)
        if layer_cache is not None:
            layer_cache["conv_state"], layer_cache["ssm_state"] = state
        return y.unflatten(-1, (len(self.replaced_heads), self.geo.head_dim))


class RecurFormerForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RecurFormerConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _no_split_modules = ["HybridAttention"]
    _supports_default_dynamic_cache = classmethod(lambda cls: False)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save plus the remote-code shim (slimkv/hub.py), as for Rodimus models."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            from ..hub import add_remote_code

            add_remote_code(save_directory)
        return out

    def __init__(self, config: RecurFormerConfig):
        super().__init__(config)
        source = config.source_config()
        check_family(source)
        self.model = AutoModel.from_config(source)
        for idx, layer in enumerate(self.model.layers):
            layer.self_attn = HybridAttention(source, config.replaced_units[idx], config.mixer, config.mixer_kwargs)
        self.lm_head = nn.Linear(source.hidden_size, source.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        h = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = h.shape
        cache = pop_cache(kwargs, past_key_values)
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if labels is not None:
            use_cache = False
        if use_cache and cache is None:
            cache = RecurFormerCache(len(self.model.layers))
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=h.device)
        if attention_mask.shape[1] != past + T:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} slots; expected {past + T}")
        valid = attention_mask.bool()
        # token index within its own sample: left padding does not shift the real tokens' RoPE positions
        positions = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        if position_ids is not None:
            positions = torch.cat((positions[:, :past], position_ids.to(positions)), dim=1)
        if cache is not None:
            cache.valid, cache.positions = valid, positions
        cos, sin = self.model.rotary_emb(h, positions[:, -T:])
        for idx, layer in enumerate(self.model.layers):
            layer_cache = cache.layers[idx] if cache is not None else None
            h = h + layer.self_attn(layer.input_layernorm(h), cos, sin, positions, valid, layer_cache)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = self.model.norm(h)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else slice(None)
        logits = self.lm_head(h[:, keep])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **with_cache(cache))

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        # transformers >= 5.24 passes the cache as `cache` (models/compat.py)
        past_key_values = pop_cache(kwargs, past_key_values)
        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        return {
            "input_ids": input_ids[:, seen:],
            "attention_mask": attention_mask,
            CACHE_KEY: past_key_values,
            "use_cache": kwargs.get("use_cache", True),
        }

    def _reorder_cache(self, past_key_values, beam_idx):
        past_key_values.reorder_cache(beam_idx)
        return past_key_values


AutoConfig.register("recurformer", RecurFormerConfig, exist_ok=True)
AutoModelForCausalLM.register(RecurFormerConfig, RecurFormerForCausalLM, exist_ok=True)
