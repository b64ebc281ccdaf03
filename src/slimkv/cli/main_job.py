"""the Quick-start job (what `make run` runs): fetch a corpus, train the tiny Rodimus+ preset inside a wall-clock
budget, report held-out perplexity against a unigram baseline, sample, plot loss and memory.

    slimkv main [--minutes 10] [--name main] [--section.field=value ...]    e.g. --data.files=notes.txt
"""
from __future__ import annotations

import argparse

from ..mainjob.job import MainJobConfig
from .options import add_config_arguments, config_from_args, pop_overrides

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, MainJobConfig, skip=("overrides",))
    parser.epilog = ("Any field of the tiny preset can be overridden with --section.field=value, e.g. "
                     "--data.files=notes.txt --optim.lr=1e-3; `slimkv train --help` lists them.")


def run(args: argparse.Namespace) -> int:
    from ..mainjob import run_main_job

    overrides = pop_overrides(args)
    job = config_from_args(args, MainJobConfig)
    job.overrides = [*job.overrides, *overrides]
    report = run_main_job(job, progress=not args.quiet)
    seconds = report["seconds"]
    print(f"\nheld-out perplexity {report['heldout_ppl']:.2f} (unigram baseline {report['unigram_ppl']:.1f}, ratio "
          f"{report['ppl_ratio_to_unigram']:.2f}), {report['heldout_bits_per_byte']:.3f} bits/byte; "
          f"{report['tokens_seen']:,} training tokens in {report['steps']} steps at "
          f"{report['train_tokens_per_s'] or 0:,.0f} tokens/s, {report['params']['total'] / 1e6:.2f}M parameters")
    print(f"time: {report['wall_seconds']:.0f} s of {report['budget_seconds']:.0f} s (data "
          f"{seconds['prepare_data']:.0f}, training {seconds['train']:.0f}, final evaluation "
          f"{seconds['final_eval']:.0f}, sample + plots {seconds['after']:.0f})")
    print(f"sample: {report['prompt']}{report['sample']}")
    print(f"wrote runs/{job.name}/report.json, loss.png, memory.png")
    return 0
