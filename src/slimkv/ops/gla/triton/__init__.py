"""Triton kernels for gated linear attention (CUDA; on CPU only under TRITON_INTERPRET=1, for tests).

Stages: prep.py (cumulative decay, decayed q/k, intra-chunk scores), chunk_fwd.py (state pass + output),
chunk_bwd.py (state gradient + dv, q/k gradients, decay gradient), step.py (fused decode step),
autograd.py (chunk tables, launches, torch.autograd.Function). Design notes: docs/kernels.md.
"""
from .autograd import TUNING, gla_triton
from .step import gla_step_triton

__all__ = ["gla_triton", "gla_step_triton", "TUNING"]
