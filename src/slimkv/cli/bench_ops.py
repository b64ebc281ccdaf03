"""gla backends: tokens/s forward and forward+backward, with each backend's error against the float64 spec.

    slimkv bench ops [--device cpu] [--shapes small|rodimus|mamba2] [--backends chunked triton] [--out DIR]
"""
from __future__ import annotations

import argparse

from ..bench.ops import OpsBenchConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, OpsBenchConfig)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..bench.ops import run_ops_bench

    config = config_from_args(args, OpsBenchConfig)
    with tqdm(desc="bench gla", unit="run", disable=args.quiet) as bar:
        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        results, json_path, png_path = run_ops_bench(config, progress=progress)
    print(f"{'backend':<10} {'shape':<34} {'dtype':<8} {'fwd tok/s':>12} {'fwd+bwd tok/s':>14} {'o rel err':>10}")
    for row in (r for r in results if r["mode"] == "forward"):
        train = next(r for r in results if r["mode"] == "forward+backward" and r["backend"] == row["backend"]
                     and r["shape"] == row["shape"] and r["dtype"] == row["dtype"])
        train_rate = "skipped" if train["tokens_per_s"] is None else f"{train['tokens_per_s']:.0f}"
        print(f"{row['backend']:<10} {row['shape']:<34} {row['dtype']:<8} {row['tokens_per_s']:>12.0f} "
              f"{train_rate:>14} {row['o_rel_err']:>10.1e}")
    print(f"wrote {json_path} and {png_path}")
    return 0
