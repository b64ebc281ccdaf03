"""`slimkv bench SUBJECT`: benchmarks that write JSON + PNG (with the commit, device and versions) into a run folder.

    slimkv bench ops --device cpu                         gla backends: tokens/s and error vs the float64 spec
    slimkv bench kernels --out $OUT                       GPU: every Triton GLA kernel checked and timed vs fla
    slimkv bench train --out $OUT                         GPU: training tokens/s, memory, MFU vs a matched Llama
    slimkv bench decode --out $OUT                        generation ms/token vs context and batch
    slimkv bench window-attn --json out.json              windowed shared-key attention vs its spec and SDPA
    slimkv bench promote runs/bench/decode                copy a result into benchmarks/results/

Results go to runs/bench/<subject>/ unless --out says otherwise; benchmarks/results/ holds only promoted results
(`slimkv bench promote RUN_DIR`). `slimkv bench SUBJECT --help` lists each subject's options.
"""
from __future__ import annotations

import argparse

# `slimkv bench X ...` runs slimkv/cli/bench_X.py; there is no default subject
DISPATCH = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .main import subcommands

    subjects = subcommands("bench")
    parser.add_argument("subject", metavar="SUBJECT", choices=list(subjects),
                        help="one of: " + ", ".join(subjects) + " (described above)")


def run(args: argparse.Namespace) -> int:
    raise AssertionError("slimkv bench dispatches to a subject module before run")
