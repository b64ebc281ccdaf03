"""RecurFormer workflows: profile a pretrained model's heads, select and convert KV units, train the result.

The model itself (RecurFormerConfig, RecurFormerForCausalLM) lives in slimkv.models.recurformer; its branches in
slimkv.layers (branches.py registry); importing slimkv registers it with the Auto classes.
"""
