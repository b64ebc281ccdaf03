"""The training mixture (train/batches.py): shares rounded to a fixed pattern, a pure function of the position."""
import numpy as np
import torch

from slimkv.train.batches import MixtureSource, PackedTokenSource, mixture_counts


def test_mixture_counts_round_shares_and_keep_every_source():
    assert mixture_counts({"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 10, "b": 6, "c": 4}
    assert mixture_counts({"a": 1.0, "b": 0.01}) == {"a": 19, "b": 1}
    assert mixture_counts({"a": 1.0, "b": 0.0}) == {"a": 20}


def test_mixture_is_a_fixed_interleaving_of_its_sources():
    a = PackedTokenSource(np.arange(1000) % 50, 8, 100, seed=0)
    b = PackedTokenSource(50 + np.arange(1000) % 50, 8, 100, seed=1)
    mix = MixtureSource({"a": a, "b": b}, {"a": 3, "b": 1})
    rows = mix.sequences(np.arange(40))
    from_b = (rows[:, 0] >= 50).tolist()
    assert sum(from_b) == 10 and from_b[:4].count(True) == 1  # one in four, spread through the pattern
    # each source is read at its own consecutive positions: the b rows are b's positions 0..9 in order
    assert torch.equal(rows[torch.tensor(from_b)], b.sequences(np.arange(10)))
    assert torch.equal(mix.sequences([17, 3]), torch.stack([rows[17], rows[3]]))
