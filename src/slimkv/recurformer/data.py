"""Text for RecurFormer: calibration text, and the training mixture in the pretrained model's own tokens.

    sources = training_sources(config.data, tokenizer_folder)     # DataSources for the project trainer

All text comes from the project's data code: the prose corpus (slimkv.data.fetch_corpus), dictionaries and technical
documentation (slimkv.data.reference), tokenised once into memory-mapped shards (slimkv.data.prepare_data). The
mixture interleaves (weights in `data.*`):

    corpus          packed sequences of the corpus train split
    reference       packed sequences of the reference text (its last 2% held out)
    long_documents  windows that lie inside one document of >= seq_len + 1 tokens (novels, manuals, dictionary
                    blocks), from seq_len >= data.long_from on: long-range context that packing would cut up
    hashhop         HashHop problems packed back to back (recurformer/hashhop.py)

Every source is a pure function of the position (the trainer's resume contract, slimkv/train/batches.py), and the
mixture is a fixed pattern, so position p always reads the same tokens.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..data import fetch_corpus, prepare_data
from ..data.reference import fetch_reference
from ..data.user_text import read_text
from ..train.batches import MixtureSource, mixture_counts
from ..train.data_sources import DataSources
from .config import MixtureConfig
from .hashhop import make_example


def calibration_text(path: str | None = None, data_dir: str | None = None, split: str = "train") -> tuple[str, str]:
    """(text, where it came from): the file at `path`, else the corpus split (fetched on first use)."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        return read_text(Path(path)), str(path)
    info = fetch_corpus(data_dir)
    return read_text(info.split_path(split)), str(info.split_path(split))


class _Permuted:
    """An epoch-repeating seeded order over `count` items (the order PackedDataset uses)."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed
        self._epoch: tuple[int, np.ndarray] | None = None

    def item(self, position: int) -> int:
        epoch, offset = divmod(position, self.count)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.count))
        return int(self._epoch[1][offset])


class LongDocumentWindows:
    """Sequences of seq_len + 1 tokens, each inside one document (documents end at `eos_id`), in a seeded order."""

    def __init__(self, streams: list[np.ndarray], eos_id: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.streams, self.seq_len, self.vocab_size = streams, seq_len, vocab_size
        windows = []
        for index, tokens in enumerate(streams):
            ends = np.flatnonzero(np.asarray(tokens) == eos_id)
            starts = np.concatenate([[0], ends[:-1] + 1])
            for start, end in zip(starts, ends):
                for offset in range(int(start), int(end) - seq_len, seq_len):
                    windows.append((index, offset))
        if not windows:
            raise ValueError(f"no document has {seq_len + 1} tokens: lower data.seq_len or set data.long_documents=0")
        self.windows = windows
        self.order = _Permuted(len(windows), seed)

    def __len__(self) -> int:
        return len(self.windows)

    def sequences(self, positions) -> torch.Tensor:
        rows = []
        for position in np.asarray(positions).reshape(-1).tolist():
            stream, start = self.windows[self.order.item(position)]
            rows.append(np.asarray(self.streams[stream][start:start + self.seq_len + 1], dtype=np.int64))
        return torch.from_numpy(np.stack(rows))


class HashHopSequences:
    """HashHop problems (2-8 chains, 1-3 hops) packed back to back, each followed by `eos_id`; row p depends only on
    (seed, p). Answers are ordinary next tokens, so the LM loss trains the lookup."""

    def __init__(self, tokenizer, seq_len: int, eos_id: int, vocab_size: int, seed: int = 0, rows: int = 1 << 20):
        self.tokenizer, self.seq_len, self.eos_id, self.vocab_size = tokenizer, seq_len, eos_id, vocab_size
        self.seed, self.rows = seed, rows

    def __len__(self) -> int:
        return self.rows

    def sequences(self, positions) -> torch.Tensor:
        rows = []
        for position in np.asarray(positions).reshape(-1).tolist():
            rng = random.Random(self.seed * 1_000_003 + position)
            ids: list[int] = []
            while len(ids) < self.seq_len + 1:
                problem = make_example(rng, num_chains=rng.randint(2, 8), hops=rng.randint(1, 3))
                ids += self.tokenizer(problem.text, add_special_tokens=False).input_ids + [self.eos_id]
            rows.append(ids[:self.seq_len + 1])
        return torch.tensor(rows, dtype=torch.long)


def training_sources(cfg: MixtureConfig, tokenizer_folder: str | Path, progress: bool = True) -> DataSources:
    """The mixture for training and the corpus held-out split for evaluation, in the model's tokens."""
    from ..data.tokenizer import load_tokenizer

    data_dir, folder = cfg.resolved_data_dir(), Path(tokenizer_folder)
    corpus = prepare_data(data_dir, seq_len=cfg.seq_len, tokenizer=folder, progress=progress)
    components: dict[str, object] = {}
    shares: dict[str, float] = {}
    streams = [corpus.tokens("train")]
    if cfg.corpus:
        components["corpus"], shares["corpus"] = corpus.dataset("train", seed=cfg.seed), cfg.corpus
    if cfg.reference or (cfg.long_documents and cfg.seq_len >= cfg.long_from):
        paths = fetch_reference(data_dir, cfg.reference_sources)
        reference = prepare_data(data_dir, seq_len=cfg.seq_len, tokenizer=folder, progress=progress,
                                 files=[str(p) for p in paths], heldout_fraction=0.02)
        streams.append(reference.tokens("train"))
        if cfg.reference:
            components["reference"] = reference.dataset("train", seed=cfg.seed + 1)
            shares["reference"] = cfg.reference
    if cfg.long_documents and cfg.seq_len >= cfg.long_from:
        components["long_documents"] = LongDocumentWindows(streams, corpus.eos_id, cfg.seq_len, corpus.vocab_size,
                                                           seed=cfg.seed + 2)
        shares["long_documents"] = cfg.long_documents
    if cfg.hashhop:
        components["hashhop"] = HashHopSequences(load_tokenizer(folder), cfg.seq_len, corpus.eos_id,
                                                 corpus.vocab_size, seed=cfg.seed + 3)
        shares["hashhop"] = cfg.hashhop
    train = MixtureSource(components, mixture_counts(shares))
    tokenizer_file = folder / "tokenizer.json"
    return DataSources(train=train, heldout=corpus.dataset("heldout"), vocab_size=corpus.vocab_size,
                       tokenizer_file=tokenizer_file if tokenizer_file.is_file() else None)
