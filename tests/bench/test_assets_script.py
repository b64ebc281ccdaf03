"""benchmarks/gpu/assets.sh: cached files -> checked xz pieces -> the same files on the other side."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "assets.sh"

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "xz", "tar", "split", "sha256sum")),
                                reason="needs bash, xz, tar, split and sha256sum")


def checkout(root: Path) -> Path:
    """A folder laid out like the repository (the script works from the root two levels above itself)."""
    (root / "benchmarks" / "gpu").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "benchmarks" / "gpu" / "assets.sh")
    return root


def run(root: Path, *args: str, store: Path, **env: str):
    return subprocess.run(["bash", str(root / "benchmarks" / "gpu" / "assets.sh"), *args], capture_output=True,
                          text=True, env={**os.environ, "SLIMKV_PIECES": str(store), **env})


def test_pieces_carried_apart_unpack_to_the_same_files(tmp_path):
    here, there = checkout(tmp_path / "here"), checkout(tmp_path / "there")
    (here / "data" / "models").mkdir(parents=True)
    payload = os.urandom(2_500_000)  # incompressible: 3 pieces of 1 MiB
    (here / "data" / "models" / "weights.bin").write_bytes(payload)
    (here / "data" / "notes.txt").write_text("kept as is\n")
    packed = run(here, "pack", str(tmp_path / "pieces"), "1", "data", store=tmp_path / "unused", XZ_LEVEL="0")
    assert packed.returncode == 0, packed.stderr
    pieces = sorted((tmp_path / "pieces").glob("part-*"))
    assert [p.name for p in pieces] == ["part-00", "part-01", "part-02"]
    # pack made one call's folder per piece: its part and the manifest
    calls = [tmp_path / "pieces" / f"{i:02d}" for i in range(3)]
    for call, piece in zip(calls, pieces):
        assert sorted(p.name for p in call.iterdir()) == ["manifest.sha256", piece.name]
        assert (call / piece.name).read_bytes() == piece.read_bytes()
    store = tmp_path / "store"
    # the last call alone lacks the earlier pieces: refused, nothing extracted
    early = run(there, "unpack", str(calls[-1]), store=tmp_path / "empty-store")
    assert early.returncode == 2 and "missing or corrupt" in early.stderr
    assert not (there / "data").exists()
    for folder in calls[:-1]:
        assert run(there, "keep", str(folder), store=store).returncode == 0
    done = run(there, "unpack", str(calls[-1]), store=store)
    assert done.returncode == 0, done.stderr
    assert (there / "data" / "models" / "weights.bin").read_bytes() == payload
    assert (there / "data" / "notes.txt").read_text() == "kept as is\n"
    # packing into a folder that exists is refused (nothing of the user's is overwritten)
    again = run(here, "pack", str(tmp_path / "pieces"), "1", "data", store=store)
    assert again.returncode == 2 and "exists" in again.stderr


def test_pieces_too_large_for_one_call_are_refused(tmp_path):
    here = checkout(tmp_path / "here")
    (here / "data").mkdir()
    (here / "data" / "notes.txt").write_text("x\n")
    # a piece and the working tree travel together, 64 MiB in all: 64 MiB pieces can never go
    refused = run(here, "pack", str(tmp_path / "pieces"), "64", "data", store=tmp_path / "unused")
    assert refused.returncode == 2 and "use at most 63 MiB" in refused.stderr
    assert not (tmp_path / "pieces").exists()
