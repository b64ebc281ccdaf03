"""Where the trainer's token batches come from, and how a global batch splits over ranks and accumulation steps.

Contract (what makes resume exact and distributed runs equal to a single process):
the global batch of optimizer step `s` is the fixed list of sequences `s * B ... s * B + B - 1` of a deterministic
order (B = train.batch_size). Micro-step `a` on rank `r` (micro batch b, world W) takes the slice
`a * b * W + r * b ... + b` of it, so the union over ranks and micro-steps is the single-process global batch.
Because the order is a pure function of the step, the data position saved in a checkpoint is just the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class SequenceSource(Protocol):
    """A deterministic, indexable stream of fixed-length token sequences (each seq_len + 1 tokens long)."""

    seq_len: int
    vocab_size: int

    def __len__(self) -> int: ...

    def sequences(self, indices: np.ndarray) -> torch.Tensor:
        """int64 [len(indices), seq_len + 1] for positions `indices` of the (shuffled, epoch-repeating) order."""
        ...


@dataclass
class BatchPlan:
    """How one optimizer step's global batch is cut: batch_size = micro_batch_size * world_size * accumulation."""

    batch_size: int
    micro_batch_size: int
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        per_pass = self.micro_batch_size * self.world_size
        if self.batch_size % per_pass:
            raise ValueError(f"config field 'train.batch_size' ({self.batch_size}) must be a multiple of "
                             f"micro_batch_size * world size ({self.micro_batch_size} * {self.world_size})")

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def positions(self, step: int, micro: int) -> np.ndarray:
        """Positions in the data order read by this rank at micro-step `micro` of optimizer step `step`."""
        start = step * self.batch_size + micro * self.micro_batch_size * self.world_size + self.rank * self.micro_batch_size
        return np.arange(start, start + self.micro_batch_size, dtype=np.int64)


class PackedTokenSource:
    """Sequences cut from one flat token array, visited in a seeded random order that is reshuffled every epoch.

    Sequence i is tokens[i * seq_len : i * seq_len + seq_len + 1] (targets overlap the next sequence by one token).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, vocab_size: int, seed: int = 0):
        self.tokens = tokens
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.seed = seed
        self.num_sequences = (len(tokens) - 1) // seq_len
        if self.num_sequences < 1:
            raise ValueError(f"the token stream ({len(tokens)} tokens) is shorter than one sequence of "
                             f"{seq_len + 1} tokens; lower 'data.seq_len' or use more data")
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_sequences

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: rng.permutation(self.num_sequences)}
        return self._orders[epoch]

    def sequences(self, indices: np.ndarray) -> torch.Tensor:
        rows = []
        for position in indices.tolist():
            epoch, offset = divmod(position, self.num_sequences)
            start = int(self._order(epoch)[offset]) * self.seq_len
            rows.append(np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64))
        return torch.from_numpy(np.stack(rows))


def synthetic_tokens(num_tokens: int, vocab_size: int, seed: int) -> np.ndarray:
    """A learnable synthetic stream: a noisy order-2 Markov chain (so the loss falls below log(vocab))."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, vocab_size, size=(vocab_size, 4))
    tokens = np.empty(num_tokens, dtype=np.int32)
    tokens[:2] = rng.integers(0, vocab_size, size=2)
    choice = rng.integers(0, 4, size=num_tokens)
    noise = rng.random(num_tokens) < 0.1
    random_tokens = rng.integers(0, vocab_size, size=num_tokens)
    for t in range(2, num_tokens):
        tokens[t] = random_tokens[t] if noise[t] else table[(tokens[t - 1] + tokens[t - 2]) % vocab_size, choice[t]]
    return tokens


# mixture pattern length: shares are rounded to multiples of 1 / MIXTURE_PERIOD
MIXTURE_PERIOD = 20


def mixture_counts(shares: dict[str, float], period: int = MIXTURE_PERIOD) -> dict[str, int]:
    """Shares -> slots per period (largest remainder; every positive share gets at least one slot)."""
    shares = {name: share for name, share in shares.items() if share > 0}
    total = sum(shares.values())
    exact = {name: period * share / total for name, share in shares.items()}
    counts = {name: max(1, int(value)) for name, value in exact.items()}
    for name in sorted(exact, key=lambda n: exact[n] - int(exact[n]), reverse=True):
        if sum(counts.values()) >= period:
            break
        counts[name] += 1
    return counts


class MixtureSource:
    """Components interleaved in a fixed pattern of `sum(counts)` positions: position p reads component
    pattern[p % period] at its own position (p // period) * count + (its occurrences before p in the pattern)."""

    def __init__(self, components: dict[str, object], counts: dict[str, int]):
        self.components = components
        slots = [(k + 0.5) / n for name, n in counts.items() for k in range(n)]
        names = [name for name, n in counts.items() for _ in range(n)]
        self.pattern = [names[i] for i in sorted(range(len(names)), key=lambda i: slots[i])]
        self.counts = counts
        self.rank = [self.pattern[:i].count(name) for i, name in enumerate(self.pattern)]
        first = next(iter(components.values()))
        self.seq_len, self.vocab_size = first.seq_len, first.vocab_size

    def __len__(self) -> int:
        return sum(len(c) for c in self.components.values())

    def sequences(self, positions) -> torch.Tensor:
        period = len(self.pattern)
        wanted: dict[str, list[tuple[int, int]]] = {}
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        for row, position in enumerate(positions.tolist()):
            cycle, slot = divmod(position, period)
            name = self.pattern[slot]
            wanted.setdefault(name, []).append((row, cycle * self.counts[name] + self.rank[slot]))
        out = torch.empty(len(positions), self.seq_len + 1, dtype=torch.long)
        for name, pairs in wanted.items():
            rows, own = zip(*pairs)
            out[list(rows)] = self.components[name].sequences(np.asarray(own, dtype=np.int64))
        return out
