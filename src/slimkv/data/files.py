"""Small file helpers shared by every workflow: the data root, sha256 of files, atomic writes, fetch errors.

`data_root()` is the one place that decides where fetched and derived data live (the corpus, tokenizers, token
shards, pretrained models, RecurFormer text): the folder given, else `$SLIMKV_DATA`, else `./data`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tqdm import tqdm

from ..io import atomic_write_bytes  # noqa: F401  (re-exported: the data modules import it from here)


class FetchError(ValueError):
    """A registry source could not be fetched or did not match its pinned checksum.

    A ValueError so that every CLI entry point prints it as one line and exits non-zero.
    """


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The git-ignored data directory: `root` if given (and not empty), else `$SLIMKV_DATA`, else `./data`."""
    return Path(root or os.environ.get("SLIMKV_DATA") or "data")


def sha256_file(path: str | os.PathLike, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks; `progress` shows a bar (for files of hundreds of MB)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                          desc=f"sha256 {path.name}", disable=not progress) as bar:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def load_manifest(path: str | os.PathLike, format_version: int) -> dict:
    """A cache folder's manifest.json, or {} when it is missing, unreadable or of another format (so it is rebuilt)."""
    try:
        manifest = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("format") == format_version else {}
