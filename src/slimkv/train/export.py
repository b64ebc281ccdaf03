"""The end of a run: a Hugging Face folder (safetensors + config + tokenizer) at <run>/model, and the tokenizer copy
kept beside the checkpoints (<run>/tokenizer) so a run folder can be evaluated without its export.

The export is built in a hidden sibling and swapped in whole (`slimkv.io.output_folder`): a crash while exporting
leaves the previous <run>/model as it was. <run>/model belongs to the run and is replaced by every export.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..io import output_folder
from .config import RunConfig
from .data_sources import DataSources
from .factory import build_model
from .hf_export import save_model_folder
from .parallelize import unwrap

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(source: Path, target_dir: Path) -> None:
    """Copy a tokenizer (a tokenizer.json, or the Hugging Face files of its folder) into target_dir."""
    folder = source if source.is_dir() else source.parent
    target_dir.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        shutil.copy(source, target_dir / "tokenizer.json")
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not (source.is_file() and name == "tokenizer.json"):
            shutil.copy(folder / name, target_dir / name)


def export_model(model, config: RunConfig, sources: DataSources, target: Path, *, is_main: bool) -> None:
    """Save a Hugging Face folder of `model` at `target` on rank 0 (collective under FSDP: every rank calls it)."""
    if config.train.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full_state = None
    if not is_main:
        return
    model = unwrap(model)
    if full_state is not None:
        fresh = build_model(config.model, model.config.vocab_size, seed=config.train.seed)
        fresh.load_state_dict(full_state)
        model = fresh
    with output_folder(target, command="train", overwrite=True) as tmp:
        # use_cache, bos/eos/pad ids and a ready tokenizer, so plain generate() and pipeline() work on the folder
        save_model_folder(model, tmp, sources.tokenizer_file)
