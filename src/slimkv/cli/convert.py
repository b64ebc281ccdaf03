"""slimkv convert official SRC DST | to-official SRC DST [--overwrite]"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=["official", "to-official"],
                        help="official: official Rodimus folder -> slimkv; to-official: slimkv -> official layout")
    parser.add_argument("src", help="source folder (config.json + model.safetensors | pytorch_model.bin)")
    parser.add_argument("dst", help="destination folder: new, empty, or an earlier output of the same conversion "
                                    "(built beside it, then swapped in whole)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty DST that this command did not write (only once the new output "
                             "is complete)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast weights when converting from the official layout (default: keep)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..convert.official import official_to_slimkv, slimkv_to_official

    if args.direction == "official":
        out = official_to_slimkv(args.src, args.dst, dtype=getattr(torch, args.dtype) if args.dtype else None,
                                 overwrite=args.overwrite)
    else:
        out = slimkv_to_official(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
