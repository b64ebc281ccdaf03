"""windowed shared-key attention (SW-SKA's op): the backend against its float64 spec, timed against chunked and
SDPA with a dense mask.

    slimkv bench window-attn [--backend flex] [--json out.json]      # the SW-SKA shape, on CUDA
    slimkv bench window-attn --small                                  # tiny CPU shapes (smoke test)
"""
from __future__ import annotations

import argparse

from ..bench.window_attn import WindowAttnBenchConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, WindowAttnBenchConfig)


def run(args: argparse.Namespace) -> int:
    from ..bench.window_attn import run_window_attn_bench

    report, path = run_window_attn_bench(config_from_args(args, WindowAttnBenchConfig),
                                         log=lambda line: print(line, flush=True))
    failed = [row for row in report["checks"] + report["times"] if "error" in row]
    print(f"wrote {path}" + (f" ({len(failed)} failed: see the JSON)" if failed else ""))
    return 1 if failed else 0
