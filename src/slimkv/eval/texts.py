"""The text an evaluation reads: a UTF-8 file of the user's, or a split of the fetched corpus (`slimkv fetch corpus`).

    documents, what = load_documents("heldout", data_dir=None)         # corpus split -> list of documents
    ids, num_bytes, what = text_ids_and_bytes("notes.txt", tokenizer)  # [separator] + tokens, UTF-8 bytes
"""
from __future__ import annotations

from pathlib import Path

import torch

SPLIT_NAMES = ("heldout", "train")


def read_text_file(path: str | Path) -> str:
    """A non-empty UTF-8 text file; one-line ValueError otherwise."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise ValueError(f"{str(path)!r} is empty")
    return text


def load_documents(target: str, data_dir: str | None = None, *, option: str = "--text",
                   progress: bool = False) -> tuple[list[str], str]:
    """Documents of a text file (separated by two blank lines) or of a corpus split -> (documents, description)."""
    path = Path(target)
    if path.is_file():
        text = read_text_file(path)
        return [doc for doc in text.split("\n\n\n") if doc.strip()], str(path)
    if target in SPLIT_NAMES:
        from ..data import fetch_corpus, read_split_documents

        info = fetch_corpus(data_dir, progress=progress)
        return read_split_documents(info, target), f"corpus split {target}"
    raise FileNotFoundError(f"{option} {target!r} is neither a file nor a corpus split ({', '.join(SPLIT_NAMES)})")


def text_ids_and_bytes(target: str, tokenizer, data_dir: str | None = None, *, progress: bool = False,
                       option: str = "--ppl") -> tuple[torch.Tensor, int, str]:
    """[document separator] + the tokens of a file or corpus split, its UTF-8 bytes, and what it was."""
    from ..data import document_separator_id

    try:
        separator = document_separator_id(tokenizer)
    except ValueError:
        separator = None
    path = Path(target)
    if path.is_file():
        from .perplexity import encode_text

        text = read_text_file(path)
        return encode_text(tokenizer, text, separator), len(text.encode("utf-8")), str(path)
    if target in SPLIT_NAMES:
        from ..data import encode_documents, fetch_corpus, read_split_documents

        info = fetch_corpus(data_dir, progress=progress)
        documents = read_split_documents(info, target)
        if not documents:
            raise ValueError(f"corpus split {target!r} is empty")
        ids = encode_documents(documents, tokenizer, progress=progress, desc=f"tokenise {target}")
        prefix = [separator] if separator is not None else []
        ids = torch.cat([torch.tensor(prefix, dtype=torch.long), torch.from_numpy(ids)])
        return ids, sum(len(doc.encode("utf-8")) for doc in documents), f"corpus split {target}"
    raise FileNotFoundError(f"{option} {target!r} is neither a file nor a corpus split ({', '.join(SPLIT_NAMES)})")
