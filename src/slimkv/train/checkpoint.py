"""Training checkpoints: written atomically, loaded with `weights_only=True`, one layout for 1 or N processes.

    <run>/checkpoints/step-000100/
        meta.pt            step, scheduler state, config (plain dict), format, world size
        state.pt           format "full" (single process, DDP): {"model": ..., "optimizer": ...} from rank 0
        dcp/               format "dcp" (FSDP): torch.distributed.checkpoint of the sharded model + optimizer
        rng-rank00000.pt   RNG states of each rank (torch, cuda, numpy, python)
    <run>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint is written into `step-N.tmp` (every file through `slimkv.io.atomic_write`, then the folder fsynced)
and renamed to `step-N` only once every file is complete, and `latest` is replaced atomically after that, so a crash,
a kill or a full disk while saving leaves the previous checkpoint and the pointer to it untouched. Only plain tensors
and primitive containers are stored, so loading never unpickles code. A checkpoint that fails to load raises
`CorruptCheckpoint`; `newest_intact` finds the newest older one that loads.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from ..io import atomic_write, atomic_write_text, fsync_dir, fsync_tree, swap_folder

LATEST = "latest"
META = "meta.pt"
STATE = "state.pt"
DCP_DIR = "dcp"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and primitives (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CorruptCheckpoint(UserError):
    """A checkpoint file is missing, truncated or unreadable."""


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


# the name older modules import (cli/eval.py, cli/train.py)
write_text_atomic = atomic_write_text


def _write_parts(tmp: Path, rank: int, model_state, optimizer_state, dcp_state) -> None:
    if dcp_state is not None:
        import torch.distributed.checkpoint as dcp

        dcp.save(dcp_state, checkpoint_id=str(tmp / DCP_DIR))
    elif rank == 0:
        _atomic_torch_save({"model": model_state, "optimizer": optimizer_state}, tmp / STATE)
    _atomic_torch_save(rng_state(), tmp / f"rng-rank{rank:05d}.pt")
    _barrier()


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    *,
    model_state: dict | None,
    optimizer_state: dict | None,
    meta: dict[str, Any],
    dcp_state: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `checkpoint_dir` (collective when distributed); returns its final path.

    Rank 0 passes `model_state`/`optimizer_state` (full format); with FSDP every rank passes `dcp_state`.
    """
    rank = _rank()
    final = checkpoint_dir / checkpoint_name(step)
    tmp = checkpoint_dir / (checkpoint_name(step) + ".tmp")
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    try:
        _write_parts(tmp, rank, model_state, optimizer_state, dcp_state)
        if rank == 0:
            _atomic_torch_save({**meta, "format": "dcp" if dcp_state is not None else "full"}, tmp / META)
    except BaseException:
        # a full disk or a crash mid-save: the partial folder goes (freeing its space), the previous checkpoint stays
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0:
        # the DCP shards were written by torch, not through atomic_write: make the whole folder durable first
        fsync_tree(tmp)
        if final.exists():
            # the same step saved again (e.g. interrupted right after a periodic save): swap it in whole, then drop
            # the old copy, which the swap left at `tmp`
            swap_folder(tmp, final)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_dir(checkpoint_dir)
        atomic_write_text(checkpoint_dir / LATEST, final.name + "\n")
        _prune(checkpoint_dir, keep, protect=final.name)
    _barrier()
    return final


def _prune(checkpoint_dir: Path, keep: int, protect: str) -> None:
    if keep <= 0:
        return
    complete = sorted(p for p in checkpoint_dir.glob("step-*") if p.is_dir() and p.suffix == "" and (p / META).exists())
    for old in complete[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """Resolve a run dir, a checkpoints dir, or a checkpoint dir to a complete checkpoint directory."""
    path = Path(path)
    if (path / META).exists():
        return path
    for candidate_dir in (path / "checkpoints", path):
        pointer = candidate_dir / LATEST
        if pointer.is_file():
            target = candidate_dir / pointer.read_text(encoding="utf-8").strip()
            if (target / META).exists():
                return target
        complete = sorted(p for p in candidate_dir.glob("step-*") if p.is_dir() and (p / META).exists()) \
            if candidate_dir.is_dir() else []
        if complete:
            return complete[-1]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    raise FileNotFoundError(f"no complete checkpoint found under {str(path)!r}")


def load_file(path: Path) -> Any:
    """torch.load with weights_only=True; a missing, truncated or corrupt file becomes a one-line CorruptCheckpoint."""
    if not path.is_file():
        raise CorruptCheckpoint(f"checkpoint file {str(path)!r} is missing (incomplete checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own text runs on for several sentences: its first one says what broke
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise CorruptCheckpoint(f"checkpoint file {str(path)!r} is corrupt or truncated ({first})") from None


def load_meta(checkpoint: Path) -> dict[str, Any]:
    return load_file(checkpoint / META)


def load_full_state(checkpoint: Path) -> dict[str, Any]:
    return load_file(checkpoint / STATE)


def load_rng(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    path = checkpoint / f"rng-rank{rank:05d}.pt"
    return load_file(path) if path.exists() else None


def is_intact(checkpoint: Path) -> bool:
    """Every file of the checkpoint loads (for a sharded one: its meta, RNG states and DCP metadata exist and load)."""
    try:
        meta = load_meta(checkpoint)
        if meta.get("format") == "dcp":
            if not (checkpoint / DCP_DIR / ".metadata").is_file():
                return False
        else:
            load_full_state(checkpoint)
        for rng in checkpoint.glob("rng-rank*.pt"):
            load_file(rng)
    except CorruptCheckpoint:
        return False
    return True


def newest_intact(checkpoint_dir: Path, older_than: Path | None = None) -> Path | None:
    """The newest complete checkpoint under checkpoint_dir (before `older_than`, if given) whose files all load."""
    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted((p for p in checkpoint_dir.glob("step-*") if p.is_dir() and p.suffix == ""), reverse=True)
    for candidate in candidates:
        if older_than is not None and candidate.name >= older_than.name:
            continue
        if is_intact(candidate):
            return candidate
    return None
