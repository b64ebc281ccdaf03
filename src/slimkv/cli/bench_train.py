"""`slimkv bench train ...` options and the call into slimkv.bench.train (parsing and printing only).

    slimkv bench train --out $OUT                                   # checks, then 3 models x T 2048/8192/16384
    slimkv bench train --check                                      # only the fused kernels against their specs
    slimkv bench train --models rodimus llama --seqs 2048 --batches 8 4 --budget 120
    slimkv bench train --set fused_ops=true --compare fused_ops=false   # Rodimus with and without a config switch
"""
from __future__ import annotations

import argparse

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `what = train` (shared parser with the other benchmarks; --out and --budget are shared too)."""
    from slimkv.bench.train import MODELS

    group = parser.add_argument_group("train")
    group.add_argument("--models", nargs="+", default=None, metavar="NAME",
                       help=f"train: models to time, from {', '.join(MODELS)} (default rodimus rodimus_plus llama)")
    group.add_argument("--seqs", type=int, nargs="+", default=None, metavar="T",
                       help="train: sequence lengths, run in this order (default 2048 16384 8192)")
    group.add_argument("--batches", type=int, nargs="+", default=None, metavar="B",
                       help="train: candidate batches, the largest that fits wins (default: predicted from the peak "
                            "memory at batch 1 and 2)")
    group.add_argument("--steps", type=int, default=3, help="train: timed steps per config (median reported)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="train: RodimusConfig override for every Rodimus model (repeatable)")
    group.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                       help="train: also time each Rodimus model with these overrides on top of --set (repeatable)")
    group.add_argument("--check", action="store_true", help="train: only check the fused kernels on the GPU")
    group.add_argument("--no-check", action="store_true", help="train: skip the kernel checks and op timings")
    group.add_argument("--no-op-timings", action="store_true", help="train: checks without the per-op timings")
    group.add_argument("--profile-seqs", type=int, nargs="*", default=None, metavar="T",
                       help="train: lengths whose step is broken down by kernel category (default 2048; none: "
                            "--profile-seqs with no value)")
    group.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto",
                       help="train: activation checkpointing (auto: only when batch 1 does not fit without)")
    group.add_argument("--compile", action="store_true", help="train: torch.compile every decoder layer")


def run(args: argparse.Namespace) -> int:
    from slimkv.bench.train import TrainBenchOptions, format_table, parse_overrides, run_train_bench

    if not torch.cuda.is_available():
        raise ValueError("slimkv bench train needs a CUDA GPU")
    defaults = TrainBenchOptions()
    compare = tuple(parse_overrides(item.split(",")) for item in args.compare)
    opts = TrainBenchOptions(
        out=args.out, models=tuple(args.models or defaults.models), seqs=tuple(args.seqs or defaults.seqs),
        batches=tuple(args.batches) if args.batches else None, steps=args.steps,
        budget_s=args.budget if args.budget is not None else defaults.budget_s,
        check=not args.no_check, check_only=args.check, op_timings=not args.no_op_timings,
        profile_seqs=tuple(args.profile_seqs) if args.profile_seqs is not None else defaults.profile_seqs,
        checkpointing=args.checkpointing, overrides=parse_overrides(args.overrides), compare=compare,
        compile=args.compile)
    report = run_train_bench(opts, log=lambda line: print(line, flush=True))
    print()
    print(format_table(report))
    failed = report.get("checks_total", 0) - report.get("checks_passed", 0)
    return 1 if failed else 0
