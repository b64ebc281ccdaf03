"""Checkpoint conversion workflows (official Rodimus layout <-> slimkv)."""
