"""One place that turns a device name from a flag or a config into a `torch.device`, or one clear line.

    device = resolve_device(args.device)                          # "--device cuda: no CUDA device ..."
    device = resolve_device(cfg.train.device, what="config field 'train.device'", index=local_rank)
"""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str, *, what: str = "--device", index: int | None = None) -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N" or "mps"; UserError when it is not here.

    `index` picks the GPU of a bare "cuda" (e.g. LOCAL_RANK under torchrun); "auto" on CPU ignores it.
    """
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"{what} is {name!r}, not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise UserError(f"{what} is {name!r} but no CUDA device is available ({build}, torch "
                            f"{torch.__version__}); use cpu")
        count = torch.cuda.device_count()
        chosen = device.index if device.index is not None else (index or 0)
        if chosen >= count:
            raise UserError(f"{what} asks for GPU {chosen} but only {count} CUDA device(s) are visible")
        return torch.device("cuda", chosen)
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"{what} is {name!r} but no MPS device is available; use cpu")
        return device
    if device.type != "cpu":
        raise UserError(f"{what} is {name!r}; slimkv runs on cpu, cuda or mps")
    return device
