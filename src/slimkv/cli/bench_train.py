"""GPU: training tokens/s, memory, MFU and kernel breakdown of Rodimus, Rodimus+ and a parameter-matched Llama;
--check: every fused kernel against its spec on the device.

    slimkv bench train --out $OUT                                   # checks, then 3 models x T 2048/16384/8192
    slimkv bench train --check                                      # only the fused kernels against their specs
    slimkv bench train --models rodimus llama --seqs 2048 --batches 8 4 --budget 120
    slimkv bench train --set fused_ops=true --compare fused_ops=false   # Rodimus with and without a config switch
"""
from __future__ import annotations

import argparse

from ..bench.train import TrainBenchOptions
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainBenchOptions)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.train import format_table, run_train_bench

    opts = config_from_args(args, TrainBenchOptions)
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("slimkv bench train needs a CUDA GPU")
    report = run_train_bench(opts, log=lambda line: print(line, flush=True))
    print()
    print(format_table(report))
    failed = report.get("checks_total", 0) - report.get("checks_passed", 0)
    return 1 if failed else 0
