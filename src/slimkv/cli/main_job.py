"""slimkv main: the Quick-start job (what `make run` runs)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="main", help="run name: outputs go to runs/NAME/")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget (wall clock)")
    parser.add_argument("--data-dir", default=None, help="data directory (default $SLIMKV_DATA or ./data)")
    parser.add_argument("overrides", nargs="*", help="extra --section.field=value overrides of configs/tiny.yaml")


def run(args: argparse.Namespace) -> int:
    from ..train.main_job import run_main_job

    if args.minutes <= 0:
        raise ValueError("--minutes must be positive")
    report = run_main_job(args.name, args.minutes, args.data_dir, tuple(args.overrides))
    print(f"\nheld-out perplexity {report['heldout_ppl']:.2f} (unigram baseline {report['unigram_ppl']:.1f}), "
          f"{report['heldout_bits_per_byte']:.3f} bits/byte; {report['tokens_seen']:,} training tokens, "
          f"{report['params']['total'] / 1e6:.2f}M parameters")
    print(f"sample: {report['prompt']}{report['sample']}")
    print(f"wrote runs/{args.name}/report.json, loss.png, memory.png")
    return 0
