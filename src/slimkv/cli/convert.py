"""convert checkpoints between the official Rodimus layout and slimkv (a bit-exact round trip).

    slimkv convert official SRC DST [--dtype bfloat16] [--overwrite]      official Rodimus folder -> slimkv
    slimkv convert to-official SRC DST [--overwrite]                      slimkv -> official layout
"""
from __future__ import annotations

import argparse

from ..convert.official import ConvertConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ConvertConfig)


def run(args: argparse.Namespace) -> int:
    from ..convert.official import convert

    print(f"wrote {convert(config_from_args(args, ConvertConfig))}")
    return 0
