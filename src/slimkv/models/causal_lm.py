"""The causal-LM head shared by slimkv's model families (Rodimus in modeling.py, RecurFormer in recurformer/).

    class RodimusForCausalLM(StatefulCausalLM, FastGenerationMixin, RodimusPreTrainedModel, GenerationMixin):
        backbone_class = RodimusModel

A family's backbone (`backbone_class`) owns the layers and the preallocated state cache (models/cache.py); this
mixin adds the tied LM head, the two loss conventions, and the generate() plumbing transformers expects of a model
whose cache is its own: no DynamicCache, and only the tokens the state has not seen fed on each call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..ops.cross_entropy import linear_cross_entropy
from .cache import RodimusCache
from .compat import CACHE_KEY, pop_cache, with_cache


class StatefulCausalLM:
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # the family's backbone: embed_tokens, allocate_cache(batch_size, dtype, device, ...) and forward(input_ids,
    # attention_mask, position_ids, cache, inputs_embeds, use_cache) -> BaseModelOutputWithPast
    backbone_class: type[nn.Module]

    def __init__(self, config):
        super().__init__(config)
        self.model = self.backbone_class(config)
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
        # the state cache is created by the model itself, not as a transformers DynamicCache
        return False

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None,
                       **sizes) -> RodimusCache:
        """An empty preallocated cache for `batch_size` rows (`sizes`: the family's own, e.g. RecurFormer's KV
        `capacity`)."""
        return self.model.allocate_cache(batch_size, dtype, device, **sizes)

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
            backend = getattr(self.config, "kernel_backend", "auto")
            loss = linear_cross_entropy(h, self.lm_head.weight, targets, backend=backend)
            return CausalLMOutputWithPast(loss=loss, logits=None)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h.to(self.lm_head.weight.dtype))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **with_cache(getattr(out, CACHE_KEY)))
