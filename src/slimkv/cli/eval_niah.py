"""needle in a haystack: pass-key retrieval over real corpus text, a grid of context length x needle depth, exact
match; writes niah.json and niah.png.

    slimkv eval niah runs/main/model --lengths 1024,2048,4096 --depths 0,50,100
"""
from __future__ import annotations

import argparse

from ..eval.niah import NIAHJob
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, NIAHJob)


def run(args: argparse.Namespace) -> int:
    from ..eval.niah import run_niah_job

    job = config_from_args(args, NIAHJob)

    def show(row) -> None:
        if not args.quiet:
            mark = "ok  " if row.correct else "miss"
            print(f"{mark} length {row.length:>6} depth {100 * row.depth:>5.1f}%  key {row.key}  got "
                  f"{row.completion.strip()[:24]!r}", flush=True)

    report, result = run_niah_job(job, on_row=show)
    print(f"mean exact match {result.mean_accuracy:.3f} over {len(result.lengths)} lengths x {len(result.depths)} "
          f"depths x {job.trials} trials ({result.seconds:.0f}s)")
    for length, row in zip(result.lengths, result.accuracy):
        print(f"  {length:>6} tokens: " + " ".join(f"{a:.2f}" for a in row))
    if result.skipped_lengths:
        print(f"  skipped (beyond the model's position limit): {', '.join(map(str, result.skipped_lengths))}")
    print(f"wrote {job.out}/niah.json and {job.out}/niah.png")
    return 0
