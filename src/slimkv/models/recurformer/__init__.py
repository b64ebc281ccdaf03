"""RecurFormer: pretrained Llama / Qwen2 / Mistral models whose recency-aware KV units run recurrent branches.

Importing this package registers RecurFormerConfig (model type "recurformer") and RecurFormerForCausalLM with
transformers' Auto classes.
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .configuration import RecurFormerConfig
from .families import SUPPORTED_FAMILIES, attention_geometry, check_family
from .modeling import RecurFormerForCausalLM, RecurFormerModel

AutoConfig.register(RecurFormerConfig.model_type, RecurFormerConfig, exist_ok=True)
AutoModelForCausalLM.register(RecurFormerConfig, RecurFormerForCausalLM, exist_ok=True)

__all__ = ["SUPPORTED_FAMILIES", "RecurFormerConfig", "RecurFormerForCausalLM", "RecurFormerModel",
           "attention_geometry", "check_family"]
