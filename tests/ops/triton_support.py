"""Shared by the fused-op tests: Triton's interpreter on the CPU, launch counting, relative errors.

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton when there is no GPU; importing this module
applies tests/triton_interpreter.py, which Triton 3.6's interpreter needs with NumPy >= 2.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

triton = pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Triton kernels run on CUDA, or on the CPU inside the interpreter (tests/conftest.py patches it)
DEVICE = "cpu" if INTERPRETED else "cuda"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN (an unwritten element under nan_empty) fails loudly."""
    assert not torch.isnan(out).any(), "NaN in output"
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


@contextlib.contextmanager
def count_launches(module, *names: str):
    """Counts `kernel[grid](...)` launches of the named @triton.jit kernels of `module` (proof that the Triton path
    ran rather than a fallback). Yields a dict name -> launches."""
    counts = {name: 0 for name in names}
    originals = {name: getattr(module, name) for name in names}

    class Counting:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            counts[self.name] += 1
            return self.kernel[grid]

    for name in names:
        setattr(module, name, Counting(name, originals[name]))
    try:
        yield counts
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
