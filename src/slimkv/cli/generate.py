"""generate text from a saved model (slimkv Rodimus/Rodimus+, RecurFormer, or any Hugging Face causal LM),
streamed as it is produced, with the cache size at the end.

    slimkv generate runs/main/model --prompt "It is a truth" [--greedy] [--max-new-tokens 64] [--json PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..eval.generate import GenerateConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GenerateConfig)
    parser.add_argument("--json", metavar="PATH", help="write prompt, completion, timings and cache bytes here "
                                                       "(the completion is then printed once, at the end)")


def run(args: argparse.Namespace) -> int:
    from ..eval.generate import generate_text
    from ..io import write_json

    config = config_from_args(args, GenerateConfig)
    if config.prompt == "-":
        config.prompt = sys.stdin.read()

    def stream(text: str) -> None:
        print(text, end="", flush=True)

    result = generate_text(config, on_text=None if args.json else stream)
    print(f"\n[{result.new_tokens} tokens in {result.seconds:.2f}s, {result.tokens_per_s:.1f} tok/s; cache "
          f"{result.cache_bytes:,} bytes]", file=sys.stderr)
    if args.json:
        print(result.completion)
        write_json(args.json, {k: v for k, v in dataclasses.asdict(result).items()})
    return 0
