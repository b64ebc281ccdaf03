"""generation ms/token vs context and batch for Rodimus, Rodimus+ and a matched Hugging Face Llama.

    slimkv bench decode --out $OUT                                   # one GPU, about 6 minutes
    slimkv bench decode --device cpu --tiny --contexts 128 --models rodimus rodimus_plus   # CPU smoke run
"""
from __future__ import annotations

import argparse

from ..bench.decode import DecodeBenchConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DecodeBenchConfig)


def run(args: argparse.Namespace) -> int:
    from ..bench.decode import print_table, run_decode_bench

    config = config_from_args(args, DecodeBenchConfig)
    report = run_decode_bench(config)
    print(print_table(report))
    print(f"wrote {config.out}/decode.json and decode.png")
    return 0
