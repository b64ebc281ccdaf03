"""`prepare_data`: text + tokenizer + token shards in one idempotent call (the main job and the trainer use it).

The text is the fetched corpus by default, or the user's own files (`files=[...]`, see slimkv.data.user_text).
Layout under the data directory:

    corpus/...                                  see slimkv.data.corpus
    files/<key[:16]>/...                        see slimkv.data.user_text
    tokenizers/bpe-<vocab>-<train sha[:12]>/    tokenizer.json, tokenizer_config.json, meta.json (training time)
    tokens/<tokenizer sha[:12]>/{train,heldout}.bin + .json             (the corpus)
    tokens/<tokenizer sha[:12]>-files-<key[:12]>/{train,heldout}...    (user files)

Every cached file is checked (sha256) before reuse, so a second call takes seconds and a damaged file is rebuilt.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from slimkv.data.corpus import SPLITS, CorpusInfo, atomic_write_bytes, fetch_corpus
from slimkv.data.files import data_root
from slimkv.data.shards import PackedDataset, encode_split_file, load_shard, unigram_perplexity
from slimkv.data.tokenizer import (backend_of, document_separator_id, load_tokenizer, tokenizer_sha256,
                                   train_tokenizer)
from slimkv.data.user_text import UserTextInfo, prepare_user_text
from slimkv.io import FileLock


@dataclass
class PreparedData:
    """Paths and metadata of prepared text. `shard_meta[split]` holds num_tokens, num_bytes, num_documents.

    `corpus` is the fetched corpus (CorpusInfo) or the user's files (UserTextInfo): both give `split_path(split)`.
    """

    data_dir: Path
    corpus: CorpusInfo | UserTextInfo
    tokenizer_path: Path
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    seq_len: int
    shards: dict[str, Path]
    shard_meta: dict[str, dict]
    timings: dict[str, float] = field(default_factory=dict)

    def tokens(self, split: str) -> np.ndarray:
        return load_shard(self.shards[split])[0]

    def dataset(self, split: str = "train", seed: int = 0, shuffle: bool | None = None,
                seq_len: int | None = None) -> PackedDataset:
        """Packed sequences of a split; shuffled for train and in order for held-out unless told otherwise."""
        return PackedDataset(self.tokens(split), seq_len or self.seq_len, seed=seed,
                             shuffle=(split == "train") if shuffle is None else shuffle, vocab_size=self.vocab_size)

    def load_tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    def num_bytes(self, split: str) -> int:
        return int(self.shard_meta[split]["num_bytes"])

    def unigram_perplexity(self, alpha: float = 1.0) -> float:
        """Add-alpha unigram perplexity: fitted on the train shard, scored on the held-out shard."""
        return unigram_perplexity(self.tokens("train"), self.tokens("heldout"), self.vocab_size, alpha)

    def summary(self) -> dict:
        return {"data_dir": str(self.data_dir), "tokenizer": str(self.tokenizer_path), "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.tokenizer_sha256, "seq_len": self.seq_len,
                "splits": {split: {key: self.shard_meta[split][key] for key in
                                   ("num_tokens", "num_bytes", "num_documents")} | {"shard": str(self.shards[split])}
                           for split in SPLITS},
                "timings_s": self.timings}


def _trained_tokenizer(corpus: CorpusInfo | UserTextInfo, vocab_size: int, progress: bool) -> tuple[Path, float]:
    train_sha = corpus.split_sha256("train")
    folder = corpus.data_dir / "tokenizers" / f"bpe-{vocab_size}-{train_sha[:12]}"
    meta_path = folder / "meta.json"
    with _preparing(folder):
        if meta_path.is_file() and (folder / "tokenizer.json").is_file():
            meta = json.loads(meta_path.read_text("utf-8"))
            try:
                loaded = load_tokenizer(folder / "tokenizer.json")
                if tokenizer_sha256(backend_of(loaded)) == meta.get("tokenizer_sha256"):
                    return folder / "tokenizer.json", 0.0
            except Exception:  # noqa: BLE001 - an unreadable cached tokenizer is simply retrained
                pass
        start = time.perf_counter()
        tokenizer = train_tokenizer(corpus.split_path("train"), vocab_size, save_dir=folder, progress=progress)
        seconds = time.perf_counter() - start
        meta = {"vocab_size": vocab_size, "train_text_sha256": train_sha, "train_seconds": round(seconds, 3),
                "tokenizer_sha256": tokenizer_sha256(tokenizer)}
        atomic_write_bytes(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
        return folder / "tokenizer.json", seconds


@contextlib.contextmanager
def _preparing(target: Path) -> Iterator[None]:
    """Held while `target` (a tokenizer folder, a shard) is checked and, if needed, built: processes started
    together on one data directory (several runs sharing one GPU machine, docs/data.md) build it once, the
    others wait and then find it current. A data directory where no lock file can be made (read-only, already
    prepared) is read without one, as before."""
    try:
        lock = FileLock(target.with_name(f".{target.name}.lock"), what=f"preparing {target}", wait=True).acquire()
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _shard_is_current(bin_path: Path, text_sha: str, tokenizer_sha: str) -> dict | None:
    try:
        _, meta = load_shard(bin_path, verify=True)
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("text_sha256") != text_sha or meta.get("tokenizer_sha256") != tokenizer_sha:
        return None
    return meta


def prepare_data(data_dir: Path | str | None = None, vocab_size: int = 8192, seq_len: int = 256,
                 sources: Iterable[str] | str | None = None, tokenizer: Path | str | None = None,
                 skip_unreachable: bool = False, progress: bool = True,
                 files: Sequence[str | Path] | None = None, text_field: str = "text",
                 heldout_fraction: float = 0.1) -> PreparedData:
    """Get the text, get a tokenizer, tokenise both splits into shards; reuse whatever is already valid.

    The text is the fetched corpus (`sources`), or with `files` the user's own text files, JSONL, folders or saved
    Hugging Face datasets, split into train / held-out by `heldout_fraction` (slimkv.data.user_text).
    tokenizer=None trains a byte-level BPE of `vocab_size` on the train split; otherwise it is a tokenizer.json or
    a Hugging Face folder (e.g. a saved SmolLM2 folder) and `vocab_size` is ignored. Raises ValueError if a split
    is too small for one sequence of seq_len + 1 tokens, FetchError (a ValueError) if a source cannot be fetched.
    """
    data_dir = data_root(data_dir).resolve()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if files:
        corpus = prepare_user_text(files, data_dir, text_field=text_field, heldout_fraction=heldout_fraction)
        shard_tag, too_small_hint = f"-{corpus.cache_tag}", "data.heldout_fraction, or give more text"
    else:
        corpus = fetch_corpus(data_dir, sources, skip_unreachable=skip_unreachable, progress=progress)
        shard_tag, too_small_hint = "", "add sources"
    timings["text"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    if tokenizer is None:
        tokenizer_path, trained_seconds = _trained_tokenizer(corpus, vocab_size, progress)
        if trained_seconds:
            timings["tokenizer_train"] = round(trained_seconds, 3)
    else:
        tokenizer_path = Path(tokenizer)
    loaded = load_tokenizer(tokenizer_path)
    backend = backend_of(loaded)
    tok_sha = tokenizer_sha256(backend)
    timings["tokenizer"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    shard_dir = data_dir / "tokens" / f"{tok_sha[:12]}{shard_tag}"
    shards: dict[str, Path] = {}
    metas: dict[str, dict] = {}
    for split in SPLITS:
        bin_path = shard_dir / f"{split}.bin"
        text_sha = corpus.split_sha256(split)
        with _preparing(bin_path):
            meta = _shard_is_current(bin_path, text_sha, tok_sha)
            if meta is None:
                meta = encode_split_file(corpus.split_path(split), loaded, bin_path, progress=progress)
        shards[split], metas[split] = bin_path, meta
        if (meta["num_tokens"] - 1) // seq_len < 1:
            raise ValueError(f"the {split} split has {meta['num_tokens']} tokens, too few for one sequence of "
                             f"seq_len + 1 = {seq_len + 1} tokens; lower data.seq_len or {too_small_hint}")
    timings["shards"] = round(time.perf_counter() - start, 3)
    return PreparedData(data_dir=data_dir, corpus=corpus, tokenizer_path=tokenizer_path, tokenizer_sha256=tok_sha,
                        vocab_size=backend.get_vocab_size(with_added_tokens=True),
                        eos_id=document_separator_id(loaded), seq_len=seq_len, shards=shards, shard_meta=metas,
                        timings=timings)
