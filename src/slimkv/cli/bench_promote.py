"""copy a benchmark's results (JSON + PNG) from its run folder into benchmarks/results/, named by device and date.

    slimkv bench promote runs/bench/decode              -> benchmarks/results/decode_h200_2026-12-01.{json,png}
"""
from __future__ import annotations

import argparse

from ..bench.harness import PromoteConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PromoteConfig)


def run(args: argparse.Namespace) -> int:
    from ..bench.harness import promote

    for path in promote(config_from_args(args, PromoteConfig)):
        print(f"wrote {path}")
    return 0
