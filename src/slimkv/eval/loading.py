"""Open what `slimkv eval` is pointed at: a Hugging Face folder (slimkv or Llama) or a training run directory."""
from __future__ import annotations

from pathlib import Path

import torch


def _load_hf_folder(folder: Path):
    from transformers import AutoModelForCausalLM

    from .. import models  # noqa: F401  (registers the slimkv classes with the Auto factories)

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load the model in {str(folder)!r}: {' '.join(str(err).split())[:300]}") from None


def _load_run_checkpoint(run_dir: Path):
    from ..train import checkpoint as ckpt
    from ..train.config import run_config_from_dict
    from ..train.factory import build_model

    checkpoint = ckpt.find_checkpoint(run_dir)
    meta = ckpt.load_meta(checkpoint)
    if meta.get("format") != "full":
        raise ValueError(f"checkpoint {str(checkpoint)!r} is a sharded (FSDP) checkpoint; evaluate the exported "
                         f"{str(run_dir / 'model')!r} folder instead")
    config = run_config_from_dict(meta["config"])
    state = ckpt.load_full_state(checkpoint)["model"]
    vocab_size = next(t.shape[0] for name, t in state.items() if "embed" in name)
    model = build_model(config.model, vocab_size, seed=config.train.seed)
    model.load_state_dict(state)
    return model


def load_model_and_tokenizer(path: str | Path):
    """-> (model in eval mode, float32, on CPU; tokenizer or None)."""
    from ..data import load_tokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    tokenizer_dir = None
    if (path / "config.json").is_file():
        model, tokenizer_dir = _load_hf_folder(path), path
    elif (path / "model" / "config.json").is_file():
        model, tokenizer_dir = _load_hf_folder(path / "model"), path / "model"
    elif (path / "checkpoints").is_dir():
        model, tokenizer_dir = _load_run_checkpoint(path), path / "tokenizer"
    else:
        raise ValueError(f"{str(path)!r} is neither a Hugging Face model folder (config.json) nor a training run "
                         "directory (model/ or checkpoints/)")
    tokenizer = None
    if tokenizer_dir is not None and any((tokenizer_dir / n).is_file() for n in ("tokenizer.json",
                                                                                   "tokenizer_config.json")):
        tokenizer = load_tokenizer(tokenizer_dir)
    return model.eval(), tokenizer
