"""Tiny run configs shared by the training tests (2 layers, d=32, seq 32, synthetic tokens)."""
from __future__ import annotations

from pathlib import Path

from slimkv.train.config import RunConfig, run_config_from_dict


def tiny_config_dict(out_dir: Path, name: str = "run", arch: str = "llama", **sections) -> dict:
    data = {
        "model": {"arch": arch, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "mem_size": 8,
                  "window_size": 16, "max_position_embeddings": 64},
        "data": {"source": "synthetic", "seq_len": 32, "synthetic_tokens": 8000, "synthetic_vocab_size": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"name": name, "out_dir": str(out_dir), "steps": 6, "batch_size": 4, "micro_batch_size": 2,
                  "checkpoint_every": 3, "export_model": False},
        "eval": {"every": 0, "max_batches": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
    }
    for section, values in sections.items():
        data[section].update(values)
    return data


def tiny_config(out_dir: Path, name: str = "run", arch: str = "llama", overrides=(), **sections) -> RunConfig:
    return run_config_from_dict(tiny_config_dict(out_dir, name, arch, **sections), overrides)
