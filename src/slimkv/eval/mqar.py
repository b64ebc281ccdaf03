"""Multi-query associative recall (MQAR), the Zoology task, written from its description (no code reused).

One example of `seq_len` tokens over a vocabulary of V (keys from the lower half, values from the upper half):

    k1 v1 k2 v2 ... kP vP | x x q x x x q x ...        (P = num_pairs key-value pairs, then the query region)

- the context is the first 2P tokens: P distinct keys from [1, V/2), each followed by its value from [V/2, V)
  (values distinct too);
- the query region holds (seq_len - 2P) / 2 query slots at even offsets from the end of the context; P of them,
  drawn without replacement with probability proportional to slot^(power_a - 1) (1-based; Zoology's power_a = 0.01
  favours slots near the context), each get one of the keys, every key exactly once, in random order;
- every other position is filler drawn uniformly from the whole vocabulary, as Zoology does;
- targets are -100 everywhere except at a query key, whose target (the next-token prediction at that position) is
  the value that followed the key in the context. Accuracy counts those positions only.

`make_mqar` is deterministic in its seed (an int or a sequence of ints, as numpy's `default_rng` takes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

IGNORE = -100
DEFAULT_VOCAB = 8192
DEFAULT_POWER_A = 0.01


@dataclass(frozen=True)
class Segment:
    """One (sequence length, key-value pairs, examples) block of a train or test set."""

    seq_len: int
    num_pairs: int
    examples: int

    @property
    def name(self) -> str:
        return f"{self.seq_len}x{self.num_pairs}"


# Zoology's original MQAR configs (docs/evaluations.md, MQAR): five train blocks, seven test blocks.
ZOOLOGY_TRAIN = (Segment(64, 4, 100_000), Segment(128, 8, 20_000), Segment(256, 16, 20_000),
                 Segment(256, 32, 20_000), Segment(256, 64, 20_000))
ZOOLOGY_TEST = (Segment(64, 4, 1000), Segment(64, 8, 1000), Segment(64, 16, 1000), Segment(128, 32, 1000),
                Segment(256, 64, 1000), Segment(512, 128, 1000), Segment(1024, 256, 1000))


def parse_segments(spec: str, default_examples: int) -> tuple[Segment, ...]:
    """'64x4,128x8:20000' -> segments; the ':N' example count is optional."""
    segments = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        shape, _, count = item.partition(":")
        try:
            seq_len, pairs = (int(part) for part in shape.split("x"))
            examples = int(count) if count else default_examples
        except ValueError:
            raise ValueError(f"bad MQAR segment {item!r}: write SEQ_LENxPAIRS or SEQ_LENxPAIRS:EXAMPLES, "
                             "e.g. 256x16:20000") from None
        check_segment(seq_len, pairs)
        if examples < 1:
            raise ValueError(f"MQAR segment {item!r} needs at least one example")
        segments.append(Segment(seq_len, pairs, examples))
    if not segments:
        raise ValueError(f"no MQAR segments in {spec!r}")
    return tuple(segments)


def check_segment(seq_len: int, num_pairs: int, vocab_size: int = DEFAULT_VOCAB) -> None:
    if num_pairs < 1 or seq_len < 4 * num_pairs:
        raise ValueError(f"MQAR needs num_pairs >= 1 and seq_len >= 4 * num_pairs (room for the context and one "
                         f"query slot per key); got seq_len {seq_len}, num_pairs {num_pairs}")
    if vocab_size < 4 or num_pairs > vocab_size // 2 - 1 or num_pairs > vocab_size - vocab_size // 2:
        raise ValueError(f"vocabulary {vocab_size} is too small for {num_pairs} distinct keys and values")


def _sample_without_replacement(rng: np.random.Generator, rows: int, population: int, k: int,
                                log_weights: np.ndarray | None = None) -> np.ndarray:
    """[rows, k] distinct indices in [0, population) per row, drawn in order with probability proportional to
    exp(log_weights) among those left (uniform when None): the Gumbel top-k trick, vectorised over rows."""
    scores = rng.gumbel(size=(rows, population))
    if log_weights is not None:
        scores += log_weights
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    # order the k winners by score, so the draw order is the sequential sampling order
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def query_slot_log_weights(num_slots: int, power_a: float = DEFAULT_POWER_A) -> np.ndarray:
    """log p(slot) up to a constant, p proportional to slot^(power_a - 1) over slots 1..num_slots."""
    return (power_a - 1.0) * np.log(np.arange(1, num_slots + 1, dtype=np.float64))


def make_mqar(num_examples: int, seq_len: int, num_pairs: int, vocab_size: int = DEFAULT_VOCAB,
              seed: int | Sequence[int] = 0, power_a: float = DEFAULT_POWER_A) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (inputs, targets), both int64 [num_examples, seq_len]; targets are IGNORE except at query keys."""
    check_segment(seq_len, num_pairs, vocab_size)
    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    rows = np.arange(num_examples)[:, None]
    keys = 1 + _sample_without_replacement(rng, num_examples, half - 1, num_pairs)
    values = half + _sample_without_replacement(rng, num_examples, vocab_size - half, num_pairs)
    context = 2 * num_pairs
    num_slots = (seq_len - context) // 2
    slots = _sample_without_replacement(rng, num_examples, num_slots, num_pairs,
                                        query_slot_log_weights(num_slots, power_a))
    query_positions = context + 2 * slots
    inputs = rng.integers(0, vocab_size, size=(num_examples, seq_len), dtype=np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    inputs[rows, query_positions] = keys
    targets = np.full((num_examples, seq_len), IGNORE, dtype=np.int64)
    targets[rows, query_positions] = values
    return torch.from_numpy(inputs), torch.from_numpy(targets)


class MQARTrainSource:
    """The trainer's data source (train/batches.py `SequenceSource`, returning `(inputs, targets)`): a finite
    training set of `segments`, served one segment per global batch.

    Each segment holds ceil(examples / batch_size) fixed batches; batch j of segment s is `make_mqar` seeded with
    (seed, s, j), so every epoch revisits the same examples (a finite train set, as in Zoology) in a batch order
    reshuffled per epoch. All micro-batches of one optimizer step come from the same global batch, so they share a
    sequence length.
    """

    def __init__(self, segments: Sequence[Segment], batch_size: int, vocab_size: int = DEFAULT_VOCAB, seed: int = 0,
                 power_a: float = DEFAULT_POWER_A):
        self.segments = tuple(segments)
        for segment in self.segments:
            check_segment(segment.seq_len, segment.num_pairs, vocab_size)
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.seed = seed
        self.power_a = power_a
        self.seq_len = max(s.seq_len for s in self.segments)
        self._batches = [(s, j) for s, segment in enumerate(self.segments)
                         for j in range(math.ceil(segment.examples / batch_size))]
        self._order: tuple[int, np.ndarray] | None = None
        self._cached: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self._batches) * self.batch_size

    @property
    def tokens_per_epoch(self) -> int:
        return sum(self.segments[s].seq_len for s, _ in self._batches) * self.batch_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, 1 << 20, epoch]).permutation(len(self._batches)))
        return self._order[1]

    def global_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global batch `index` of the epoch-repeating order: (inputs, targets) [batch_size, seq_len of its segment]."""
        if self._cached is None or self._cached[0] != index:
            epoch, offset = divmod(index, len(self._batches))
            s, j = self._batches[int(self._epoch_order(epoch)[offset])]
            self._cached = (index, self._batch(s, j))
        return self._cached[1]

    def _batch(self, s: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed batch j of segment s."""
        segment = self.segments[s]
        return make_mqar(self.batch_size, segment.seq_len, segment.num_pairs, self.vocab_size, seed=[self.seed, s, j],
                         power_a=self.power_a)

    def training_examples(self, examples: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per train segment, its first `examples` training examples (the batches the model trained on), so that
        accuracy on them can be set beside the held-out accuracy: a model that memorised its finite train set
        scores high here and near chance there."""
        out = {}
        for s, segment in enumerate(self.segments):
            count = min(examples, segment.examples)
            batches = [self._batch(s, j) for j in range(math.ceil(count / self.batch_size))]
            out[segment.name] = tuple(torch.cat(part)[:count] for part in zip(*batches))
        return out

    def sequences(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch_ids = np.unique(indices // self.batch_size)
        if len(batch_ids) != 1:
            raise ValueError("an MQAR micro-batch must lie inside one global batch (positions from BatchPlan)")
        inputs, targets = self.global_batch(int(batch_ids[0]))
        offsets = torch.from_numpy(indices % self.batch_size)
        return inputs[offsets], targets[offsets]


def make_test_sets(segments: Sequence[Segment], vocab_size: int = DEFAULT_VOCAB, seed: int = 1,
              power_a: float = DEFAULT_POWER_A) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Held-out examples per segment, from a seed stream disjoint from training's ([seed, 1 << 30, i])."""
    return {segment.name: make_mqar(segment.examples, segment.seq_len, segment.num_pairs, vocab_size,
                                    seed=[seed, 1 << 30, i], power_a=power_a)
            for i, segment in enumerate(segments)}


@torch.no_grad()
def query_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 64,
                   autocast_dtype: torch.dtype | None = None) -> float:
    """Share of query positions (targets != IGNORE) where the model's argmax next token is the target value."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = targets[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x, use_cache=False).logits
        scored = y != IGNORE
        correct += int((logits.argmax(-1) == y)[scored].sum())
        total += int(scored.sum())
    model.train(was_training)
    return correct / max(total, 1)
