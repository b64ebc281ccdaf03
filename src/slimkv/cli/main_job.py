"""slimkv main: the Quick-start job (what `make run` runs)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="main", help="run name: outputs go to runs/NAME/ (default: main)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="wall-clock budget of the whole job, data preparation and the final evaluation "
                             "included; the training steps are planned from the measured speed (default: 10)")
    parser.add_argument("--data-dir", default=None, help="data directory (default: $SLIMKV_DATA or ./data)")
    parser.add_argument("overrides", nargs="*",
                        help="extra --section.field=value overrides of the tiny preset, e.g. --data.files=my.txt")


def run(args: argparse.Namespace) -> int:
    from ..mainjob import run_main_job

    if args.minutes <= 0:
        raise ValueError("--minutes must be positive")
    report = run_main_job(args.name, args.minutes, args.data_dir, tuple(args.overrides))
    seconds = report["seconds"]
    print(f"\nheld-out perplexity {report['heldout_ppl']:.2f} (unigram baseline {report['unigram_ppl']:.1f}, ratio "
          f"{report['ppl_ratio_to_unigram']:.2f}), {report['heldout_bits_per_byte']:.3f} bits/byte; "
          f"{report['tokens_seen']:,} training tokens in {report['steps']} steps at "
          f"{report['train_tokens_per_s'] or 0:,.0f} tokens/s, {report['params']['total'] / 1e6:.2f}M parameters")
    print(f"time: {report['wall_seconds']:.0f} s of {report['budget_seconds']:.0f} s (data "
          f"{seconds['prepare_data']:.0f}, training {seconds['train']:.0f}, final evaluation "
          f"{seconds['final_eval']:.0f}, sample + plots {seconds['after']:.0f})")
    print(f"sample: {report['prompt']}{report['sample']}")
    print(f"wrote runs/{args.name}/report.json, loss.png, memory.png")
    return 0
