"""Your own text for training: plain-text files, JSONL, folders of them, or a Hugging Face dataset saved to disk.

    info = prepare_user_text(["notes.txt", "chats.jsonl", "docs/"], text_field="text", heldout_fraction=0.1)
    info.split_path("train"), info.split_path("heldout")   # documents joined by "\\n\\n\\n", as in the corpus

What a document is:
- a plain-text file (any name except *.jsonl / *.ndjson / *.json): the whole file;
- a JSONL file: one JSON object per line, its string field `text_field`; a *.json file: a JSON list of such objects,
  or JSONL;
- a folder: every non-hidden file below it, in sorted path order, each read as above; a folder written by
  `datasets.Dataset.save_to_disk` (or `DatasetDict.save_to_disk`): one document per row, column `text_field`.

Every document is normalised as little as the packing needs: `\\r\\n` -> `\\n`, a leading BOM dropped, runs of blank
lines collapsed to one (so the separator `\\n\\n\\n` never occurs inside a document), outer blank lines stripped.

Held-out split: the last `heldout_fraction` of the text (by UTF-8 bytes, in input order) never reaches training or the
tokenizer; the document straddling the cut is split at a line break, so even a single file gets a held-out part.
A saved DatasetDict with a "validation" (or "test") split uses that split as the held-out text instead.

Layout under the data directory (see slimkv.data.prepare for the tokenizer and shards built from it):

    files/<key[:16]>/train.txt, heldout.txt     the two splits
    files/<key[:16]>/manifest.json              inputs (path, sha256, bytes), options, split sha256s and sizes

`key` is the sha256 of the inputs' contents and the options, so renaming an input keeps the cache and editing one
rebuilds it; the split files are checked against the manifest on every call.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from slimkv.data.files import atomic_write_bytes, data_root, load_manifest, sha256_file

DOCUMENT_SEPARATOR = "\n\n\n"
SPLITS = ("train", "heldout")
FORMAT = 1
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# bytes read to tell text from binary: a NUL in the first 8 KiB means binary (the rule git and grep use)
SNIFF_BYTES = 8192
# characters: a document is cut for the held-out split only where both pieces are at least this long
MIN_PIECE = 64
FORMATS_HINT = "give UTF-8 text, JSONL, a folder of them, or a Hugging Face dataset saved with save_to_disk"


@dataclass(frozen=True)
class UserTextInfo:
    """The prepared splits of the user's files (the same interface prepare_data reads from CorpusInfo)."""

    data_dir: Path
    folder: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def cache_tag(self) -> str:
        """Suffix of the token-shard folder, so shards of different texts never share a folder."""
        return f"files-{self.key[:12]}"

    def split_path(self, split: str) -> Path:
        return self.folder / f"{split}.txt"

    def split_sha256(self, split: str) -> str:
        return self.manifest["splits"][split]["sha256"]


def normalise_document(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return re.sub(r"\n[ \t]*(\n[ \t]*)+\n", "\n\n", text).strip("\n")


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or ((folder / "state.json").is_file()
                                                        and (folder / "dataset_info.json").is_file())


def read_text(path: Path) -> str:
    """A file as UTF-8 text; one-line ValueErrors for empty, binary and non-UTF-8 files."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path} is empty")
    nul = raw.find(b"\0", 0, SNIFF_BYTES)
    if nul >= 0:
        raise ValueError(f"{path} looks like a binary file (a NUL byte at offset {nul}); {FORMATS_HINT}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 4]!r}); "
                         f"re-encode it, e.g. iconv -f latin1 -t utf-8 {path.name}") from None


def _field_of(record, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with a {text_field!r} field, got {type(record).__name__}")
    if not isinstance(record.get(text_field), str):
        fields = ", ".join(map(str, record)) or "none"
        raise ValueError(f"{where}: no string field {text_field!r} (fields: {fields}); set --data.text_field")
    return record[text_field]


def _jsonl_documents(path: Path, text: str, text_field: str) -> list[str]:
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not JSON ({err.msg}); a JSONL file holds one JSON object "
                             f"per line") from None
        docs.append(_field_of(record, text_field, f"{path} line {number}"))
    return docs


def file_documents(path: Path, text_field: str = "text") -> list[str]:
    """The raw documents of one file (see the module docstring)."""
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_documents(path, text, text_field)
    if suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            return _jsonl_documents(path, text, text_field)
        if not isinstance(whole, list):
            raise ValueError(f"{path} holds one JSON {type(whole).__name__}; give a list of objects or JSONL")
        return [_field_of(record, text_field, f"{path} item {i}") for i, record in enumerate(whole)]
    return [text]


def _dataset_documents(folder: Path, text_field: str) -> tuple[list[str], list[str] | None]:
    """(documents, held-out documents or None) of a saved Hugging Face dataset."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{folder} is a saved Hugging Face dataset; reading it needs the datasets package: "
                         f"pip install 'slimkv[datasets]'") from None
    loaded = datasets.load_from_disk(str(folder))
    heldout = None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        train_name = "train" if "train" in loaded else names[0]
        held_name = next((n for n in ("validation", "test") if n in loaded and n != train_name), None)
        heldout = _column(loaded[held_name], text_field, f"{folder} split {held_name!r}") if held_name else None
        loaded = loaded[train_name]
    return _column(loaded, text_field, str(folder)), heldout


def _column(dataset, text_field: str, where: str) -> list[str]:
    if text_field not in dataset.column_names:
        raise ValueError(f"dataset {where} has no column {text_field!r} (columns: {', '.join(dataset.column_names)});"
                         f" set --data.text_field")
    values = dataset[text_field]
    if any(not isinstance(v, str) for v in values):
        raise ValueError(f"dataset {where}: column {text_field!r} is not text")
    return list(values)


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The input files and saved-dataset folders behind `paths`, in order (folders walked in sorted order)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data file {str(given)!r} does not exist")
        if path.is_dir() and not is_saved_dataset(path):
            inside = sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not inside:
                raise ValueError(f"folder {path} holds no files")
            saved = sorted({p.parent for p in inside if is_saved_dataset(p.parent)})
            if saved:
                raise ValueError(f"folder {path} contains a saved Hugging Face dataset ({saved[0]}); name that folder "
                                 f"itself in --data.files")
            found.extend(inside)
        else:
            found.append(path)
    if not found:
        raise ValueError(f"no input files given; {FORMATS_HINT}")
    return found


def _input_record(path: Path) -> dict:
    if path.is_dir():
        digest = hashlib.sha256()
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(member.relative_to(path).as_posix().encode() + b"\0" + sha256_file(member).encode())
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return {"path": str(path.resolve()), "kind": "dataset", "sha256": digest.hexdigest(), "bytes": size}
    return {"path": str(path.resolve()), "kind": "file", "sha256": sha256_file(path), "bytes": path.stat().st_size}


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out): the last `fraction` of the text by UTF-8 bytes, cutting one document at a line break
    (or a space)."""
    sizes = [len(doc.encode("utf-8")) for doc in docs]
    target = fraction * sum(sizes)
    held: list[str] = []
    taken = 0
    index = len(docs)
    while index > 0 and taken + sizes[index - 1] <= target:
        index -= 1
        taken += sizes[index]
        held.insert(0, docs[index])
    train = docs[:index]
    if taken < target and train:
        last = train.pop()
        # cut the straddling document so that about `target - taken` bytes of its end go to held-out, unless one
        # side would be a scrap (then the whole document goes to the nearer side)
        want = len(last) - int(len(last) * (target - taken) / max(1, len(last.encode("utf-8"))))
        if want < MIN_PIECE or len(last) - want < MIN_PIECE:
            if want < MIN_PIECE:
                held.insert(0, last)
            else:
                train.append(last)
            return train, held
        # at a line break if there is one before the cut point, else at a space, else exactly there
        at = next((at for at in (last.rfind("\n", 0, max(1, want)), last.rfind(" ", 0, max(1, want))) if at > 0),
                  None)
        head, tail = (last[:at], last[at + 1:]) if at is not None else (last[:max(1, want)], last[max(1, want):])
        head, tail = head.rstrip("\n"), tail.strip("\n")
        if head:
            train.append(head)
        if tail:
            held.insert(0, tail)
    return train, held


def _join(docs: list[str]) -> bytes:
    return (DOCUMENT_SEPARATOR.join(docs) + "\n").encode("utf-8")



def prepare_user_text(paths: Sequence[str | os.PathLike], data_dir: str | os.PathLike | None = None,
                      text_field: str = "text", heldout_fraction: float = 0.1) -> UserTextInfo:
    """Read, normalise and split the user's inputs into `data_dir/files/<key>/{train,heldout}.txt`; reuse a valid
    cache. Raises FileNotFoundError for a missing path and ValueError (one line) for unusable input."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"config field 'data.heldout_fraction' must lie strictly between 0 and 1, got "
                         f"{heldout_fraction}")
    data_dir = data_root(data_dir).resolve()
    inputs = expand_inputs(paths)
    records = [_input_record(path) for path in inputs]
    identity = {"format": FORMAT, "inputs": [r["sha256"] for r in records], "text_field": text_field,
                "heldout_fraction": heldout_fraction}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    folder = data_dir / "files" / key[:16]
    manifest_path = folder / "manifest.json"
    old = load_manifest(manifest_path, FORMAT)
    if old.get("key") == key and all((folder / f"{s}.txt").is_file()
                                     and sha256_file(folder / f"{s}.txt") == old["splits"][s]["sha256"]
                                     for s in SPLITS):
        return UserTextInfo(data_dir, folder, old)

    docs: list[str] = []
    given_heldout: list[str] | None = None
    for path in inputs:
        if path.is_dir():
            rows, held = _dataset_documents(path, text_field)
            docs += rows
            if held is not None:
                given_heldout = (given_heldout or []) + held
        else:
            docs += file_documents(path, text_field)
    docs = [d for d in map(normalise_document, docs) if d.strip()]
    where = ", ".join(str(p) for p in paths)
    if not docs:
        raise ValueError(f"no text in {where} (every document is empty)")
    if given_heldout is not None:
        train = docs
        heldout = [d for d in map(normalise_document, given_heldout) if d.strip()]
    else:
        train, heldout = split_heldout(docs, heldout_fraction)
    for split, part in (("train", train), ("heldout", heldout)):
        if not part:
            raise ValueError(f"the {split} split of {where} is empty; give more text or change "
                             f"data.heldout_fraction ({heldout_fraction})")
    splits = {}
    for split, part in (("train", train), ("heldout", heldout)):
        blob = _join(part)
        atomic_write_bytes(folder / f"{split}.txt", blob)
        splits[split] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "documents": len(part)}
    manifest = {"format": FORMAT, "key": key, "inputs": records, "text_field": text_field,
                "heldout_fraction": heldout_fraction,
                "heldout_rule": "the dataset's own validation/test split" if given_heldout is not None else
                f"the last {heldout_fraction:g} of the text by bytes", "splits": splits}
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return UserTextInfo(data_dir, folder, manifest)
