"""Small file helpers shared by the data pipeline: the data directory, checksums, atomic writes, fetch errors."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..io import atomic_write_bytes  # noqa: F401  (re-exported: the data modules import it from here)


class FetchError(ValueError):
    """A registry source could not be fetched or did not match its pinned checksum.

    A ValueError so that every CLI entry point prints it as one line and exits non-zero.
    """


def default_data_dir() -> Path:
    """`$SLIMKV_DATA` if set, else `./data`."""
    return Path(os.environ.get("SLIMKV_DATA") or "data")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

