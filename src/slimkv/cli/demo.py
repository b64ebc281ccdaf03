"""a small random Rodimus+ model: generate with its constant-size cache, and compare its memory with a same-size
Transformer's KV cache. Runs in seconds on a CPU; no downloads.

    slimkv demo [--block-type rodimus] [--hidden-size 256] [--new-tokens 48] [--json PATH]
"""
from __future__ import annotations

import argparse

from ..mainjob.demo import DemoConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DemoConfig)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")


def run(args: argparse.Namespace) -> int:
    from ..io import write_json
    from ..mainjob.demo import run_demo

    config = config_from_args(args, DemoConfig)
    result = run_demo(config)
    print(f"{config.block_type}: d={config.hidden_size}, {config.layers} layers, {result['params'] / 1e6:.2f}M "
          "parameters (random weights: the text is noise, the memory is real)")
    print(f"generated {config.new_tokens} tokens in {result['seconds']:.2f}s ({result['generate_tokens_per_s']:.1f} "
          f"tok/s): {result['text']!r}")
    print(f"cache bytes before generating: {result['cache_bytes_before']:,}; after {result['seen_tokens']} tokens: "
          f"{result['cache_bytes_after']:,}")
    print(f"\n{'context':>9}  {config.block_type + ' state':>18}  {'Transformer KV':>16}  ratio")
    for row in result["memory"]:
        state, kv = row["state_bytes"], row["transformer_kv_bytes"]
        print(f"{row['tokens']:>9,}  {state / 2**20:>15.2f} MB  {kv / 2**20:>13.2f} MB  {kv / state:6.1f}x")
    print("(bf16 activations, batch 1; the recurrent state stays float32. Transformer: same width and depth, MHA)")
    if args.json:
        write_json(args.json, {"config": result["config"], "params": result["params"],
                               "generate_tokens_per_s": result["generate_tokens_per_s"], "memory": result["memory"]})
    return 0
