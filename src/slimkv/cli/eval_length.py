"""length extrapolation: held-out loss against position up to far past the training length, one curve per model;
writes length.json and length.png.

    slimkv eval length runs/len/rodimus runs/len/llama --length 4096 --trained-length 256 --out runs/length
"""
from __future__ import annotations

import argparse
import math

from ..eval.length import LengthJob
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, LengthJob)


def run(args: argparse.Namespace) -> int:
    from ..eval.length import run_length_job

    job = config_from_args(args, LengthJob)
    curves = run_length_job(job, progress=not args.quiet)
    for name, curve in curves.items():
        points = ", ".join(f"{p}: {math.exp(v):.1f}" for p, v in zip(curve.positions(), curve.loss)
                           if p in (0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384) or p == curve.positions()[-1])
        print(f"{name} ({curve.sequences} sequences of {curve.length}): ppl by position {points}")
    print(f"wrote {job.out}/length.json and {job.out}/length.png")
    return 0
