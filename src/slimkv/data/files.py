"""Small file helpers shared by the data pipeline: the data directory, checksums, atomic writes, fetch errors."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
