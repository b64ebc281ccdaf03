"""Build the trainer's train / held-out sequence sources from the `data` config section."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .batches import MixtureSource, PackedTokenSource, SequenceSource, mixture_counts, synthetic_tokens
from .config import DataConfig


@dataclass
class DataSources:
    train: SequenceSource
    heldout: SequenceSource | None
    vocab_size: int
    # a Hugging Face tokenizer.json to ship with exported models (None for synthetic data)
    tokenizer_file: Path | None = None


def synthetic_sources(cfg: DataConfig) -> DataSources:
    """A learnable synthetic stream, its last tenth held out (same distribution, never trained on)."""
    heldout_tokens = max(cfg.synthetic_tokens // 10, 2 * (cfg.seq_len + 1))
    tokens = synthetic_tokens(cfg.synthetic_tokens + heldout_tokens, cfg.synthetic_vocab_size, cfg.seed)
    train = PackedTokenSource(tokens[:cfg.synthetic_tokens], cfg.seq_len, cfg.synthetic_vocab_size, seed=cfg.seed)
    heldout = HeldoutSource(tokens[cfg.synthetic_tokens:], cfg.seq_len, cfg.synthetic_vocab_size)
    return DataSources(train=train, heldout=heldout, vocab_size=cfg.synthetic_vocab_size)


class HeldoutSource(PackedTokenSource):
    """Held-out sequences in file order (no shuffling), each seq_len + 1 tokens, non-overlapping targets."""

    def _order(self, epoch: int):
        import numpy as np

        return np.arange(self.num_sequences)


def corpus_sources(cfg: DataConfig, progress: bool = True) -> DataSources:
    """The fetched corpus, or the user's `data.files` (slimkv.data.prepare_data): text + tokenizer + shards, cached
    and checksummed.

    Under torchrun rank 0 prepares first while the others wait, so they never write the same cache at once.
    """
    import torch.distributed as dist

    from ..data import prepare_data

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0

    def prepare(show: bool):
        return prepare_data(cfg.resolved_data_dir(), vocab_size=cfg.tokenizer_vocab_size, seq_len=cfg.seq_len,
                            tokenizer=cfg.tokenizer or None, progress=show, files=cfg.files or None,
                            text_field=cfg.text_field, heldout_fraction=cfg.heldout_fraction)

    prepared = prepare(progress) if rank == 0 else None
    if distributed:
        dist.barrier()
        if rank != 0:
            prepared = prepare(False)
    train = prepared.dataset("train", seed=cfg.seed)
    if cfg.passkey:
        from ..data.passkey import PasskeySequences

        passkey = PasskeySequences(prepared.load_tokenizer(), prepared.tokens("train"), cfg.seq_len, prepared.eos_id,
                                   prepared.vocab_size, seed=cfg.seed)
        train = MixtureSource({"text": train, "passkey": passkey},
                              mixture_counts({"text": 1.0 - cfg.passkey, "passkey": cfg.passkey}))
    return DataSources(train=train, heldout=prepared.dataset("heldout"), vocab_size=prepared.vocab_size,
                       tokenizer_file=Path(prepared.tokenizer_path))


def build_sources(cfg: DataConfig) -> DataSources:
    if cfg.source == "synthetic":
        return synthetic_sources(cfg)
    return corpus_sources(cfg)
