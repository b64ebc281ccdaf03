"""Tokenised corpus splits as memory-mapped shards, packed into fixed-length training sequences.

A shard is `<split>.bin` (raw little-endian uint16 when the vocabulary fits, else uint32) beside `<split>.json`
(dtype, token/document/byte counts, vocab size, separator id, sha256 of the tokenizer, of the source text and of the
.bin). Every document is followed by the separator token (`<|endoftext|>`), so the stream reads
`doc0 <eos> doc1 <eos> ...`.

`num_bytes` in the meta is the UTF-8 size of the documents' text (separators excluded): the denominator for
bits-per-byte, `bpb = total_nll_nats / (ln 2 * num_bytes)`, which compares models with different tokenizers.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from slimkv.data.corpus import atomic_write_bytes, sha256_file
from slimkv.data.tokenizer import (backend_of, document_separator_id, iter_documents, read_corpus_text,
                                   tokenizer_sha256)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_documents(documents: list[str], tokenizer, batch_documents: int = 64, progress: bool = True,
                     desc: str = "tokenise") -> np.ndarray:
    """Encode documents in batches and join them as `doc0 <eos> doc1 <eos> ...` -> int64 [num_tokens]."""
    backend = backend_of(tokenizer)
    eos = document_separator_id(tokenizer)
    pieces: list[np.ndarray] = []
    bar = tqdm(total=sum(len(doc) for doc in documents), desc=desc, unit="char", unit_scale=True,
               disable=not progress)
    # encode_batch_fast skips character offsets (about twice as fast); older tokenizers lack it
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    for start in range(0, len(documents), batch_documents):
        batch = documents[start:start + batch_documents]
        for encoding in encode_batch(batch, add_special_tokens=False):
            pieces.append(np.asarray(encoding.ids, dtype=np.int64))
            pieces.append(np.asarray([eos], dtype=np.int64))
        bar.update(sum(len(doc) for doc in batch))
    bar.close()
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def write_shard(tokens: np.ndarray, bin_path: Path, meta: dict) -> dict:
    """Write tokens (cast to the vocabulary's dtype) and the JSON meta atomically; returns the full meta."""
    vocab_size = int(meta["vocab_size"])
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
    dtype = token_dtype(vocab_size)
    data = np.ascontiguousarray(tokens, dtype=dtype.newbyteorder("<")).tobytes()
    atomic_write_bytes(bin_path, data)
    meta = {**meta, "dtype": dtype.name, "num_tokens": int(tokens.size),
            "bin_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(bin_path.with_suffix(".json"), (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def read_shard_meta(bin_path: Path | str) -> dict:
    meta_path = Path(bin_path).with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"shard meta {meta_path} does not exist")
    return json.loads(meta_path.read_text("utf-8"))


def load_shard(bin_path: Path | str, verify: bool = False) -> tuple[np.ndarray, dict]:
    """(read-only memmap of the tokens, meta). Raises ValueError when the .bin size disagrees with the meta
    (a truncated write) or, with `verify`, when its sha256 does."""
    bin_path = Path(bin_path)
    meta = read_shard_meta(bin_path)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    expected = meta["num_tokens"] * dtype.itemsize
    if not bin_path.is_file() or bin_path.stat().st_size != expected:
        size = bin_path.stat().st_size if bin_path.is_file() else "missing"
        raise ValueError(f"shard {bin_path} is damaged: {size} bytes, meta says {expected}")
    if verify and sha256_file(bin_path) != meta["bin_sha256"]:
        raise ValueError(f"shard {bin_path} is damaged: sha256 differs from its meta")
    if meta["num_tokens"] == 0:
        return np.zeros(0, dtype=dtype), meta
    return np.memmap(bin_path, dtype=dtype, mode="r"), meta


def encode_split_file(text_path: Path | str, tokenizer, bin_path: Path | str, on_invalid: str = "error",
                      progress: bool = True) -> dict:
    """Tokenise one split file (documents separated by "\\n\\n\\n") into a shard; returns its meta.

    Undecodable bytes fail by default; with on_invalid="skip" they are dropped and counted in
    meta["skipped_invalid_bytes"]. An empty file raises ValueError.
    """
    text_path, bin_path = Path(text_path), Path(bin_path)
    _, skipped = read_corpus_text(text_path, on_invalid)
    documents = list(iter_documents(text_path, on_invalid))
    tokens = encode_documents(documents, tokenizer, progress=progress, desc=f"tokenise {text_path.name}")
    backend = backend_of(tokenizer)
    meta = {
        "source_text": str(text_path), "text_sha256": sha256_file(text_path),
        "tokenizer_sha256": tokenizer_sha256(backend), "vocab_size": backend.get_vocab_size(with_added_tokens=True),
        "eos_id": document_separator_id(tokenizer), "num_documents": len(documents),
        "num_bytes": sum(len(doc.encode("utf-8")) for doc in documents), "skipped_invalid_bytes": skipped,
    }
    return write_shard(tokens, bin_path, meta)


class PackedDataset:
    """Fixed-length training sequences cut from one token stream, in a deterministic seeded order.

    Sequence j is `tokens[j * seq_len : j * seq_len + seq_len + 1]` (inputs = first seq_len tokens, labels = last
    seq_len; consecutive sequences share one boundary token, and the tail shorter than a sequence is dropped), so
    there are `(num_tokens - 1) // seq_len` sequences. Documents are already joined with `<|endoftext|>`, so a
    sequence may span documents.

    Order: an infinite stream of positions 0, 1, 2, ...; position p lies in epoch `p // len(self)` and reads
    sequence `perm_epoch[p % len(self)]`, where perm_epoch is `np.random.default_rng([seed, epoch])`'s permutation
    (or the identity when shuffle=False, which is what held-out evaluation wants). The order depends only on
    (seed, num_tokens, seq_len), never on how many processes read it.

    Data-parallel contract (the trainer relies on it): the global batch of step s with batch size B is positions
    `s * B ... s * B + B - 1`. With world_size W (B divisible by W), rank r reads the contiguous slice
    `s * B + r * B / W ... s * B + (r + 1) * B / W - 1`. The slices of ranks 0..W-1 are disjoint, and concatenated
    in rank order they equal the single-process global batch of step s, exactly, for every s.

    Resume: `batch(step, ...)` is a pure function of the step. The stateful `next_batch` keeps `position` (global
    sequences consumed); `state_dict()` / `load_state_dict()` save and restore it and refuse a state made for a
    different stream. It also implements the trainer's SequenceSource protocol (`seq_len`, `vocab_size`,
    `__len__`, `sequences(indices)`).
    """

    def __init__(self, tokens: np.ndarray | Path | str, seq_len: int, seed: int = 0, shuffle: bool = True,
                 vocab_size: int | None = None):
        if isinstance(tokens, (str, Path)):
            tokens, meta = load_shard(tokens)
            vocab_size = vocab_size or meta["vocab_size"]
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.vocab_size = int(vocab_size) if vocab_size else int(np.max(tokens)) + 1 if len(tokens) else 0
        self.num_sequences = (len(tokens) - 1) // self.seq_len if len(tokens) else 0
        if self.num_sequences < 1:
            raise ValueError(f"the corpus has {len(tokens)} tokens, too few for one sequence of seq_len + 1 = "
                             f"{self.seq_len + 1} tokens; lower seq_len or use more text")
        self.position = 0
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_sequences

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_sequences)
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            self._cached_epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences))
        return self._cached_epoch[1]

    def sequences(self, positions: Iterable[int] | np.ndarray) -> torch.Tensor:
        """int64 [len(positions), seq_len + 1]: the sequences at these positions of the (epoch-repeating) order."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and positions.min() < 0:
            raise ValueError("positions must be non-negative")
        rows = np.empty((positions.size, self.seq_len + 1), dtype=np.int64)
        for row, position in enumerate(positions.tolist()):
            epoch, offset = divmod(position, self.num_sequences)
            start = int(self._order(epoch)[offset]) * self.seq_len
            rows[row] = self.tokens[start:start + self.seq_len + 1]
        return torch.from_numpy(rows)

    @staticmethod
    def rank_positions(step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Positions rank `rank` of `world_size` reads at step `step` (see the class docstring)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank} of {world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})")
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        per_rank = batch_size // world_size
        start = step * batch_size + rank * per_rank
        return np.arange(start, start + per_rank, dtype=np.int64)

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels), each int64 [batch_size // world_size, seq_len]: this rank's share of step `step`."""
        rows = self.sequences(self.rank_positions(step, batch_size, rank, world_size))
        return rows[:, :-1], rows[:, 1:]

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch; advances `position` by the GLOBAL batch_size (every rank
        advances alike, so their positions stay equal)."""
        if self.position % batch_size:
            raise ValueError(f"position {self.position} is not a multiple of batch_size {batch_size}; "
                             f"use batch(step, ...) when the batch size changes mid-run")
        step = self.position // batch_size
        out = self.batch(step, batch_size, rank, world_size)
        self.position += batch_size
        return out

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len, "shuffle": self.shuffle,
                "num_tokens": int(len(self.tokens))}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "shuffle", "num_tokens"):
            if state.get(key) != mine[key]:
                raise ValueError(f"data state was saved for {key}={state.get(key)!r}, this dataset has {mine[key]!r}")
        self.position = int(state["position"])


def unigram_perplexity(train_tokens: np.ndarray, heldout_tokens: np.ndarray, vocab_size: int,
                       alpha: float = 1.0) -> float:
    """Perplexity of a unigram model fitted on `train_tokens`, evaluated on `heldout_tokens`.

    Additive (Laplace, alpha = 1 is add-one) smoothing over the whole vocabulary:
    p(w) = (count_train(w) + alpha) / (N_train + alpha * vocab_size), so unseen tokens keep a non-zero probability.
    Returns exp(-mean_t log p(heldout_t)); its bits-per-byte is ln(ppl) * num_heldout_tokens / (ln 2 * num_bytes).
    """
    train_tokens = np.asarray(train_tokens).reshape(-1)
    heldout_tokens = np.asarray(heldout_tokens).reshape(-1)
    if train_tokens.size == 0 or heldout_tokens.size == 0:
        raise ValueError("unigram_perplexity needs non-empty train and held-out token arrays")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    for name, tokens in (("train", train_tokens), ("held-out", heldout_tokens)):
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"{name} token ids must lie in [0, {vocab_size})")
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    log_prob = np.log(counts + alpha) - math.log(train_tokens.size + alpha * vocab_size)
    heldout_counts = np.bincount(heldout_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    mean_nll = -float(heldout_counts @ log_prob) / heldout_tokens.size
    return math.exp(mean_nll)


def bits_per_byte(total_nll_nats: float, num_bytes: int) -> float:
    """Bits per UTF-8 byte of text from a summed negative log-likelihood in nats."""
    if num_bytes <= 0:
        raise ValueError("num_bytes must be positive")
    return total_nll_nats / (math.log(2) * num_bytes)
