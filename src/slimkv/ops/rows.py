"""Host-side helpers shared by the row-wise Triton ops (norms, gates, SwiGLU, loss): no triton import here.

legend: R rows (every leading dim flattened), C channels (the last dim)
"""
from __future__ import annotations

import functools

import torch

from .dispatch import resolve_backend

HALF_AND_FLOAT = (torch.float16, torch.bfloat16, torch.float32)


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [R, C] with unit stride along C: a view when the layout allows (e.g. one half of a fused
    projection's output, whose rows are 2C apart), a copy otherwise."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 or rows.shape[-1] == 1 else rows.contiguous()


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for low-precision tensors; float64 stays float64 (the specs are checked in float64)."""
    return x if x.dtype == torch.float64 else x.float()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_workers(device: torch.device) -> int:
    """Programs for a persistent grid (kernels that loop over rows and write one partial sum each): 4 per SM on CUDA;
    a few on the CPU, where kernels only run in Triton's interpreter."""
    if device.type == "cuda":
        return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


def check_dtypes(op: str, **tensors: torch.Tensor | None) -> None:
    """The Triton paths take half or single precision (float64 stays on the torch spec)."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in HALF_AND_FLOAT:
            raise ValueError(f"{op}: the triton backend takes float16/bfloat16/float32 {name}; got {t.dtype}")


BACKENDS = ("auto", "torch", "triton")


def pick_backend(op: str, backend: str, gpu_module: str, *tensors: torch.Tensor | None) -> str:
    """"torch" or "triton" for a fused op: "auto" is triton on CUDA when `gpu_module` imports and every input is half
    or single precision (float64 stays on the spec), torch elsewhere."""
    device = next(t for t in tensors if t is not None).device
    chosen = resolve_backend(op, backend, BACKENDS, device, "triton", gpu_module, cpu_backend="torch")
    if backend == "auto" and any(t is not None and t.dtype not in HALF_AND_FLOAT for t in tensors):
        return "torch"
    return chosen


@functools.lru_cache(maxsize=None)
def _mm_out_float32_works(device_type: str) -> bool:
    """torch.mm(..., out_dtype=float32) (half inputs, float32 output) exists on CUDA in recent torch."""
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device=device_type)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in float32 (no rounding to the operand dtype in between when torch allows)."""
    if a.dtype == torch.float32 or a.dtype == torch.float64:
        return a @ b
    if _mm_out_float32_works(a.device.type):
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()
