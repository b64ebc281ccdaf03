"""GPU: correctness of every Triton GLA kernel against float64, timings against the floors and the fla peer.

    slimkv bench kernels --out $OUT [--tune] [--target-only] [--budget 420]
"""
from __future__ import annotations

import argparse
import time

from ..bench.kernels import KernelsBenchConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, KernelsBenchConfig)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.kernels import format_summary, run_kernels_bench

    config = config_from_args(args, KernelsBenchConfig)
    if not torch.cuda.is_available():
        raise ValueError("slimkv bench kernels needs a CUDA GPU")
    started = time.time()
    report = run_kernels_bench(config, log=lambda line: print(f"[{time.time() - started:5.0f}s] {line}", flush=True))
    print(format_summary(report))
    return 0 if all(c["passed"] for c in report.get("checks", [])) else 1
