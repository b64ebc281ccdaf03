"""perplexity of a model on a text file or a corpus split (recurrent models carry their state across windows).

    slimkv eval MODEL --ppl FILE_OR_SPLIT [--seq-len N] [--stride S] [--mode recurrent|sliding] [--json PATH]
"""
from __future__ import annotations

import argparse

from ..eval.perplexity import PerplexityJob
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PerplexityJob)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    from ..eval.perplexity import evaluate_perplexity
    from ..io import write_json

    job = config_from_args(args, PerplexityJob)
    record = evaluate_perplexity(job, progress=not args.quiet)
    print(f"{record['text']}: {record['tokens']} tokens, {record['bytes']} bytes; token ppl {record['token_ppl']:.3f}, "
          f"bits/byte {record['bits_per_byte']:.4f}, byte ppl {record['byte_ppl']:.4f} ({record['mode']}, seq_len "
          f"{record['seq_len']}" + (f", stride {record['stride']})" if record["mode"] == "sliding" else ")"))
    if args.json:
        write_json(args.json, record)
    return 0
