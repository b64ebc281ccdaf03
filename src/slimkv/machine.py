"""What a reader needs to compare two result files: the commit, the device, the versions, the load.

    header = machine_header("cuda")     # {"git_commit", "device", "device_name", "torch", "triton", ...}

Every JSON slimkv writes with numbers in it (benchmarks, evaluations, the main job's report) carries this header.
The commit is the real one: $SLIMKV_COMMIT when set (the GPU machines run a copy of the tree without .git; their
launchers set it), else `git rev-parse HEAD` of the checkout slimkv is imported from (`git_dirty` says whether its
src/slimkv had uncommitted changes); None when neither is known (an installed wheel), never a made-up value.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit() -> str | None:
    """$SLIMKV_COMMIT, else the checkout's HEAD, else None."""
    if os.environ.get("SLIMKV_COMMIT"):
        return os.environ["SLIMKV_COMMIT"].strip()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PACKAGE_DIR, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (head.stdout.strip() or None) if head.returncode == 0 else None


def git_dirty() -> bool | None:
    """True when the checkout's src/slimkv has uncommitted changes; None when that cannot be known (SLIMKV_COMMIT
    set: a copied tree without .git, or no git)."""
    if os.environ.get("SLIMKV_COMMIT"):
        return None
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", str(_PACKAGE_DIR)], cwd=_PACKAGE_DIR,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(status.stdout.strip()) if status.returncode == 0 else None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_slug(header: dict) -> str:
    """A short file-name word for the device of a header: "h200", "h100", "cpu" (benchmarks/results/ names)."""
    if header.get("device") != "cuda":
        return "cpu"
    name = str(header.get("device_name", "gpu")).lower()
    for word in name.replace("-", " ").split():
        if any(ch.isdigit() for ch in word) and word not in ("nvidia",):
            return "".join(ch for ch in word if ch.isalnum())
    return "gpu"


def machine_header(device: str | torch.device = "cpu") -> dict:
    """Versions, hardware, threads, load, commit and date of this run on `device`."""
    device = torch.device(device)
    header = {
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # other jobs on a shared machine slow every backend alike; the load says how much to trust absolute numbers
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        header.update(sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
    return header
