"""RecurFormer: replace recency-aware attention units of pretrained Llama/Qwen2/Mistral models with recurrent heads.

Importing this package registers RecurFormerConfig / RecurFormerForCausalLM with transformers' Auto classes.
"""
from .modeling import RecurFormerConfig, RecurFormerForCausalLM  # noqa: F401  (registers the Auto classes)

__all__ = ["RecurFormerConfig", "RecurFormerForCausalLM"]
