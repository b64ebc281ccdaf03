"""Real file-system failures for the safety tests: a tiny tmpfs that fills up, a read-only folder, folder digests.

Mounting needs root with CAP_SYS_ADMIN (CI containers usually have it). Where it is not possible the callers fall
back: a full disk becomes a patched writer raising ENOSPC; a read-only folder becomes chmod 0555 (which stops a
normal user, not root, so as root without mount the test is skipped and tests/test_errors.py still checks the
errno -> message mapping).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def _mount(args: list[str]) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[bool]:
    """Mount a tmpfs of `size_bytes` at `path` for the block; yields False (nothing mounted) where it cannot."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount(["-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)])
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def readonly_folder(path: Path, populate=None) -> Iterator[Path]:
    """`path` as a folder nobody can write to (after `populate(path)` filled it), for the block."""
    with tmpfs(path, 1 << 20) as mounted:
        if populate is not None:
            populate(path)
        if mounted and _mount(["-o", "remount,ro", str(path)]):
            yield path
            return
        if os.geteuid() == 0:
            pytest.skip("root without mount: chmod cannot make a folder read-only for root "
                        "(the errno mapping is covered by tests/test_errors.py)")
        mode = path.stat().st_mode
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        try:
            yield path
        finally:
            path.chmod(mode)


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or "dir" (folders) of everything under folder: "nothing changed" checks."""
    found = {}
    for item in sorted(Path(folder).rglob("*")):
        rel = item.relative_to(folder).as_posix()
        found[rel] = hashlib.sha256(item.read_bytes()).hexdigest() if item.is_file() else "dir"
    return found
