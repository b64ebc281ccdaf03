"""slimkv convert official SRC DST | to-official SRC DST"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=["official", "to-official"],
                        help="official: official Rodimus folder -> slimkv; to-official: slimkv -> official layout")
    parser.add_argument("src", help="source folder (config.json + model.safetensors | pytorch_model.bin)")
    parser.add_argument("dst", help="destination folder (written atomically; replaced if it exists)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast weights when converting from the official layout (default: keep)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..convert.official import official_to_slimkv, slimkv_to_official

    if args.direction == "official":
        out = official_to_slimkv(args.src, args.dst, dtype=getattr(torch, args.dtype) if args.dtype else None)
    else:
        out = slimkv_to_official(args.src, args.dst)
    print(f"wrote {out}")
    return 0
