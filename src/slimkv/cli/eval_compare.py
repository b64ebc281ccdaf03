"""side-by-side comparison of trained runs: held-out perplexity, needle in a haystack, tokens/s and decode state
bytes in one table; writes compare.json, compare.md and compare.png.

    slimkv eval compare runs/matched/rodimus runs/matched/llama --niah-lengths 1024,2048,4096 --out runs/compare
"""
from __future__ import annotations

import argparse

from ..eval.compare import CompareJob
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, CompareJob)


def run(args: argparse.Namespace) -> int:
    from ..eval.compare import compare_runs, format_table

    job = config_from_args(args, CompareJob)
    report = compare_runs(job, progress=not args.quiet)
    print(format_table(report))
    print(f"wrote {job.out}/compare.json, compare.md and compare.png")
    return 0
