"""RecurFormer's training sources: windows inside long documents, HashHop rows, calibration text."""
import random

import numpy as np
import pytest
import torch

from slimkv.recurformer.data import HashHopSequences, LongDocumentWindows, calibration_text
from slimkv.recurformer.hashhop import make_example


def test_long_document_windows_never_cross_a_document_end():
    eos = 0
    docs = [np.arange(1, 30), np.arange(1, 5), np.arange(100, 170)]
    tokens = np.concatenate([np.append(d, eos) for d in docs])
    windows = LongDocumentWindows([tokens], eos, seq_len=9, vocab_size=200, seed=0)
    # windows of 10 tokens every 9: 29 tokens -> starts 0, 9, 18; 4 -> none; 70 -> starts 0 .. 54
    assert len(windows) == 3 + 7
    rows = windows.sequences(np.arange(len(windows)))
    assert (rows != eos).all() and (rows[:, 1:] - rows[:, :-1] == 1).all()
    with pytest.raises(ValueError, match="no document has 101 tokens"):
        LongDocumentWindows([tokens], eos, seq_len=100, vocab_size=200)


class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return type("Encoding", (), {"input_ids": [1 + ord(c) % 90 for c in text]})()


def test_hashhop_rows_are_packed_problems_and_depend_only_on_the_position():
    source = HashHopSequences(CharTokenizer(), seq_len=300, eos_id=0, vocab_size=100, seed=4)
    rows = source.sequences([0, 1, 0])
    assert rows.shape == (3, 301) and torch.equal(rows[0], rows[2]) and not torch.equal(rows[0], rows[1])
    # the row opens with a whole HashHop problem, then the separator
    rng = random.Random(4 * 1_000_003)
    chains, hops = rng.randint(2, 8), rng.randint(1, 3)
    ids = CharTokenizer()(make_example(rng, num_chains=chains, hops=hops).text).input_ids
    assert rows[0, :len(ids)].tolist() == ids and rows[0, len(ids)] == 0


def test_calibration_text_errors_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="text file not found"):
        calibration_text(str(tmp_path / "nothing.txt"))
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):
        calibration_text(str(tmp_path / "empty.txt"))
    (tmp_path / "text.txt").write_text("Some real words.")
    assert calibration_text(str(tmp_path / "text.txt")) == ("Some real words.", str(tmp_path / "text.txt"))
