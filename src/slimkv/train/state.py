"""A run folder's state: who may write it (the lock), its checkpoints, and the rules for resuming from one.

    <run>/.lock          fcntl lock held by the one `slimkv train` writing this folder (it holds that PID)
    <run>/checkpoints/   see checkpoint.py

Resume rules (checked before anything in the run folder changes):
- the model's shape, the global batch, the data's size and the checkpoint format must match: always refused;
- data and schedule settings (every `data.*` and `optim.*` field, and `train.steps`, the length of the cosine
  schedule) must match unless `allow_config_change=True` (`--allow-config-change`); the refusal names each field;
- a checkpoint that does not load is refused, naming the newest older checkpoint that does.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import config_to_dict
from ..errors import UserError
from ..io import FileLock
from . import checkpoint as ckpt
from .config import LEGACY_ZERO, RunConfig
from .parallelize import all_reduce_sum, unwrap

logger = logging.getLogger(__name__)

LOCK = ".lock"
# fields whose change makes a resumed run differ from the one it continues; see the module docstring
RESUME_SECTIONS = ("data", "optim")
RESUME_FIELDS = ("train.steps",)
# model options that decide the parameters' shapes (compared when the checkpoint's config has them)
MODEL_FIELDS = ("arch", "hidden_size", "num_hidden_layers", "mem_size", "expand_ratio", "num_heads",
                "num_key_value_heads", "window_size", "intermediate_size", "tie_word_embeddings", "vocab_size",
                "conv_size", "ffn_expand_ratio", "input_gate_low_rank")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: dict, current: dict) -> list[str]:
    """'field: saved -> current' for each data/schedule setting (RESUME_SECTIONS, RESUME_FIELDS) that differs.

    Fields the saved config does not have (written by an older slimkv) are not compared."""
    old, new = _flatten(saved), _flatten(current)
    watched = [k for k in new if k.split(".")[0] in RESUME_SECTIONS or k in RESUME_FIELDS]
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in watched if k in old and old[k] != new[k]]


class RunFolder:
    """The exclusive lock on <run> for the whole of a training (rank 0 takes it; every rank learns the outcome)."""

    def __init__(self, run_dir: Path, *, is_main: bool, device: torch.device):
        self.run_dir, self.is_main, self.device = run_dir, is_main, device
        self._lock = FileLock(run_dir / LOCK, what=f"run folder {str(run_dir)!r}")
        # the outermost folder the lock had to create (removed again if setup fails)
        self._created: Path | None = None

    def acquire(self) -> None:
        error = None
        if self.is_main:
            missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
            self._created = missing[-1] if missing else None
            try:
                self._lock.acquire()
            except UserError as err:
                error = err
        (failed,) = all_reduce_sum([1.0 if error is not None else 0.0], self.device)
        if error is not None:
            raise error
        if failed:
            raise UserError(f"run folder {str(self.run_dir)!r} is in use by another process (rank 0 could not lock it)")

    def release(self, *, failed_setup: bool = False) -> None:
        """Drop the lock; after a setup that failed, also remove the folders acquire() created, if still empty."""
        self._lock.release()
        if not (failed_setup and self.is_main and self._created is not None):
            return
        if [p.name for p in self.run_dir.iterdir()] != [LOCK]:
            return
        (self.run_dir / LOCK).unlink()
        for folder in (self.run_dir, *self.run_dir.parents):
            folder.rmdir()
            if folder == self._created:
                break


@dataclass
class ResumePoint:
    checkpoint: Path
    step: int
    tokens_seen: int


class Checkpointer:
    """Save and restore the full training state (model, optimizer, schedule, RNG, data position) of one run."""

    def __init__(self, run_dir: Path, config: RunConfig, *, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.checkpoint_dir = run_dir / "checkpoints"
        self.last: Path | None = None

    def has_checkpoints(self) -> bool:
        return self.checkpoint_dir.exists() and any(self.checkpoint_dir.glob("step-*"))

    # ---------------------------------------------------------------- save
    def save(self, step: int, model, optimizer, scheduler, *, tokens_seen: int, data_sequences: int) -> Path:
        meta = {"step": step, "scheduler": scheduler.state_dict(), "config": config_to_dict(self.config),
                "world_size": self.world_size, "data_position": step * self.config.train.batch_size,
                "data_sequences": data_sequences, "tokens_seen": tokens_seen}
        keep = self.config.train.keep_checkpoints
        if self.config.train.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(model, optimizer)
            path = ckpt.save_checkpoint(self.checkpoint_dir, step, model_state=None, optimizer_state=None, meta=meta,
                                        dcp_state={"model": model_state, "optim": optim_state}, keep=keep)
        else:
            is_main = self.rank == 0
            path = ckpt.save_checkpoint(self.checkpoint_dir, step,
                                        model_state=unwrap(model).state_dict() if is_main else None,
                                        optimizer_state=optimizer.state_dict() if is_main else None,
                                        meta=meta, keep=keep)
        self.last = path
        return path

    # ---------------------------------------------------------------- resume
    def resume(self, source: str | os.PathLike, model, optimizer, scheduler, *, data_sequences: int,
               allow_config_change: bool = False) -> ResumePoint:
        """Load the checkpoint `source` names (a run dir: its latest) into model/optimizer/scheduler and the RNG."""
        checkpoint = ckpt.find_checkpoint(source)
        try:
            return self._load(checkpoint, model, optimizer, scheduler, data_sequences, allow_config_change)
        except ckpt.CorruptCheckpoint as err:
            intact = ckpt.newest_intact(checkpoint.parent, older_than=checkpoint)
            hint = (f"; the newest intact checkpoint is {str(intact)!r}: continue from it with --resume {intact}"
                    if intact is not None else "; there is no older intact checkpoint")
            raise ckpt.CorruptCheckpoint(f"{err}{hint}") from None

    def _load(self, checkpoint: Path, model, optimizer, scheduler, data_sequences: int,
              allow_config_change: bool) -> ResumePoint:
        meta = ckpt.load_meta(checkpoint)
        changes = self.check_compatible(checkpoint, meta, data_sequences, allow_config_change)
        if meta["format"] == "dcp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optim_state}
            try:
                dcp.load(state, checkpoint_id=str(checkpoint / ckpt.DCP_DIR))
            except Exception as err:
                raise ckpt.CorruptCheckpoint(f"checkpoint {str(checkpoint)!r} cannot be loaded: "
                                             f"{' '.join(str(err).split())[:300]}") from None
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            state = ckpt.load_full_state(checkpoint)
            try:
                unwrap(model).load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as err:
                detail = " ".join(str(err).split())[:300]
                raise UserError(f"checkpoint {str(checkpoint)!r} does not match the model: {detail}") from None
        scheduler.load_state_dict(meta["scheduler"])
        rng = ckpt.load_rng(checkpoint, self.rank)
        if rng is not None:
            ckpt.set_rng_state(rng)
        self.last = checkpoint
        if changes:
            # said once the checkpoint has loaded: a refused resume says only why it was refused
            logger.warning("resuming %s with changed settings (--allow-config-change): %s", checkpoint,
                           "; ".join(changes))
        return ResumePoint(checkpoint, int(meta["step"]), int(meta.get("tokens_seen", 0)))

    def check_compatible(self, checkpoint: Path, meta: dict[str, Any], data_sequences: int,
                         allow_config_change: bool) -> list[str]:
        """Refuse a checkpoint this config cannot continue (module docstring); hard rules first, then settings.
        Returns the settings that changed (allowed by `allow_config_change`)."""
        saved = meta.get("config", {})
        saved_model = dict(saved.get("model", {}))
        current_all = config_to_dict(self.config)
        current = current_all["model"]
        # compare layer counts as resolved (num_hidden_layers, or layers_by_arch[arch] when that is 0)
        for fields in (saved_model, current):
            if fields.get("num_hidden_layers") == 0:
                fields["num_hidden_layers"] = fields.get("layers_by_arch", {}).get(fields.get("arch"), 0)
            # checkpoints of older slimkv spell "derive it" as 0 (train/config.py LEGACY_ZERO)
            for key in LEGACY_ZERO:
                if fields.get(key) == 0:
                    fields[key] = None
        for key in MODEL_FIELDS:
            if key in saved_model and saved_model[key] != current[key]:
                raise UserError(f"checkpoint {str(checkpoint)!r} does not match the config: model.{key} is "
                                f"{saved_model[key]!r} there and {current[key]!r} here")
        saved_train = saved.get("train", {})
        if saved_train.get("batch_size", self.config.train.batch_size) != self.config.train.batch_size:
            raise UserError(f"checkpoint {str(checkpoint)!r} was trained with train.batch_size="
                            f"{saved_train['batch_size']}; resuming needs the same global batch")
        saved_sequences = meta.get("data_sequences", data_sequences)
        if saved_sequences != data_sequences:
            raise UserError(f"checkpoint {str(checkpoint)!r} was trained on data with {saved_sequences} sequences, "
                            f"this config's data has {data_sequences}; resuming needs the same data")
        saved_format = meta.get("format")
        wanted = "dcp" if self.config.train.parallel == "fsdp" else "full"
        if saved_format != wanted:
            raise UserError(f"checkpoint {str(checkpoint)!r} has format {saved_format!r} but train.parallel="
                            f"{self.config.train.parallel!r} needs {wanted!r}")
        changes = changed_settings(saved, current_all)
        if changes and not allow_config_change:
            raise UserError(f"checkpoint {str(checkpoint)!r} was trained with other data or schedule settings "
                            f"({'; '.join(changes)}); resuming would silently change the data order or the learning "
                            "rate: restore them, or pass --allow-config-change to continue with the new values")
        return changes
