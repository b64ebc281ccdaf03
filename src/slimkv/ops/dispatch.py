"""Backend choice shared by every op: "auto" picks the op's GPU path on CUDA when it imports, its CPU path elsewhere
(chunked torch for gla and window attention, the plain torch spec for the fused training ops)."""
from __future__ import annotations

import functools
import importlib

import torch


@functools.lru_cache(maxsize=None)
def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def gpu_path_available(device: torch.device, module: str) -> bool:
    """True on CUDA when `module` (the GPU path's implementation) imports; the import is tried once per module."""
    return device.type == "cuda" and _imports(module)


def resolve_backend(op: str, backend: str, choices: tuple[str, ...], device: torch.device, gpu_backend: str,
                    gpu_module: str, cpu_backend: str = "chunked") -> str:
    if backend not in choices:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {choices}")
    if backend == "auto":
        return gpu_backend if gpu_path_available(device, gpu_module) else cpu_backend
    return backend
