"""Where folders saved before the move load their classes from: their slimkv_auto.py imports this module.

The model lives in slimkv/models/recurformer/ (new folders point there, slimkv/hub.py).
"""
from ..models.recurformer import RecurFormerConfig, RecurFormerForCausalLM  # noqa: F401
