"""Reference text (dictionaries, manuals): each extractor on a small Debian package built here with dpkg-deb, the
dictd index numbers, and the cache reused by sha256."""
import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess

import pytest

from slimkv.data import reference
from slimkv.data.reference import REFERENCE_SOURCES, _dictd_number, fetch_reference

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def build_deb(tmp_path, name, files: dict[str, bytes]):
    root = tmp_path / f"{name}-root"
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
                                             "Description: test\n")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(tmp_path / f"{name}.deb")],
                   check=True, capture_output=True)
    return tmp_path / f"{name}.deb"


def b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def test_dictd_numbers_are_base64_digits():
    assert [_dictd_number(s) for s in ("A", "B", "BA", "//", "5I")] == [0, 1, 64, 4095, 57 * 64 + 8]


def test_dictd_entries_become_blocks_of_consecutive_entries(tmp_path, monkeypatch):
    entries = [("00-database-info", "about"), ("apple", "apple\n   A fruit."), ("Apple", None),
               ("banana", "banana\n   Another fruit.")]
    data, index, offset = b"", [], 0
    for word, text in entries:
        if text is None:  # a second headword pointing at the previous entry
            index.append(f"{word}\t{b64(offset - len(prev))}\t{b64(len(prev))}")
            continue
        prev = (text + "\n").encode()
        index.append(f"{word}\t{b64(offset)}\t{b64(len(prev))}")
        data, offset = data + prev, offset + len(prev)
    deb = build_deb(tmp_path, "dict-foldoc", {"usr/share/dictd/foldoc.dict.dz": gzip.compress(data),
                                              "usr/share/dictd/foldoc.index": "\n".join(index).encode()})
    monkeypatch.setattr(reference, "BLOCK_CHARS", 10)
    docs = REFERENCE_SOURCES["foldoc"].extract(deb)
    assert [d.text for d in docs] == ["apple\n   A fruit.", "banana\n   Another fruit."]
    assert docs[0].title == "FOLDOC: apple - apple"


def test_wordnet_synsets_become_gloss_lines(tmp_path):
    line = "00001740 03 n 02 physical_entity 0 thing 1 000 | an entity that has physical existence  \n"
    files = {f"usr/share/wordnet/data.{pos}": (b"  1 licence header\n" + (line.encode() if pos == "noun" else b""))
             for pos in ("noun", "verb", "adj", "adv")}
    docs = REFERENCE_SOURCES["wordnet"].extract(build_deb(tmp_path, "wordnet-base", files))
    assert [d.text for d in docs] == ["physical entity, thing (noun): an entity that has physical existence"]


def test_manual_pages_are_one_document_each(tmp_path):
    page = b"<html><head><style>p {}</style><title>T</title></head><body><h1>SELECT</h1><p>Retrieve  rows.</p>" \
           b"<script>x()</script></body></html>"
    deb = build_deb(tmp_path, "postgresql-doc-15", {"usr/share/doc/postgresql-doc-15/html/sql-select.html": page,
                                                    "usr/share/doc/postgresql-doc-15/html/style.css": b"p {}"})
    docs = REFERENCE_SOURCES["postgresql-docs"].extract(deb)
    assert [(d.id, d.text) for d in docs] == [("sql-select.html", "T\nSELECT\nRetrieve rows.")]


def test_fetch_reuses_a_valid_archive_and_rebuilds_a_damaged_jsonl(tmp_path, monkeypatch):
    deb = build_deb(tmp_path, "perl-doc", {"usr/share/perl/5.36.0/pod/perlintro.pod": b"=head1 NAME\n\nperlintro\n"})
    source = REFERENCE_SOURCES["perl-docs"]
    # the package built here stands in for the pinned one (same name, its own checksum)
    monkeypatch.setitem(REFERENCE_SOURCES, "perl-docs",
                        dataclasses.replace(source, sha256=hashlib.sha256(deb.read_bytes()).hexdigest()))
    downloads = tmp_path / "data" / "downloads" / "reference"
    downloads.mkdir(parents=True)
    shutil.copy(deb, downloads / source.archive)
    (path,) = fetch_reference(tmp_path / "data", ["perl-docs"])
    assert json.loads(path.read_text())["text"] == "=head1 NAME\n\nperlintro"
    path.write_text("damaged\n")
    (again,) = fetch_reference(tmp_path / "data", ["perl-docs"])
    assert json.loads(again.read_text())["id"] == "perlintro.pod"
    with pytest.raises(ValueError, match="unknown reference source"):
        fetch_reference(tmp_path / "data", ["encyclopedia"])
