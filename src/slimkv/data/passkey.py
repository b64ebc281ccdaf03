"""Passkey problems: the prompt format `slimkv eval niah` scores (eval/niah.py), and training rows in that format.

A prompt is `INSTRUCTION + haystack[:d] + NEEDLE + haystack[d:] + QUESTION`; its answer is `ANSWER` (the key after
"The pass key is"). `PasskeySequences` makes rows of exactly seq_len + 1 tokens for the trainer (`data.passkey`, a
share of the training mixture, train/data_sources.py): the haystack is a window of the training token stream at a
position drawn per row, the needle at a depth drawn per row, then the answer and the document separator, so the
language-model loss on the answer tokens trains the retrieval that NIAH measures, at budgets where it would not
emerge from plain text (docs/evaluations.md: 130m models at 9.8M tokens score 0). Row p depends only on (seed, p),
the trainer's resume contract (train/batches.py). The evaluation draws its haystack from the held-out split.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

INSTRUCTION = ("There is a pass key hidden inside a lot of irrelevant text. Find it and remember it; "
               "you will be asked for it at the end.\n\n")
NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"
ANSWER = " {key}"


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (a transformers tokenizer or a bare `tokenizers.Tokenizer`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer.encode(text, add_special_tokens=False))


def random_key(rng: np.random.Generator, digits: int = 5) -> str:
    """A key of exactly `digits` digits (no leading zero)."""
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


class PasskeySequences:
    """Training rows of seq_len + 1 tokens: a passkey prompt over a window of `stream` and its answer, then `eos_id`.

    `stream` is the training split's token array (real text); `rows` bounds the positions (each is a fresh problem).
    """

    def __init__(self, tokenizer, stream: np.ndarray, seq_len: int, eos_id: int, vocab_size: int, seed: int = 0,
                 key_digits: int = 5, rows: int = 1 << 24):
        self.tokenizer, self.stream, self.seq_len, self.eos_id = tokenizer, stream, seq_len, eos_id
        self.vocab_size, self.seed, self.key_digits, self.rows = vocab_size, seed, key_digits, rows
        self.head, self.question = encode(tokenizer, INSTRUCTION), encode(tokenizer, QUESTION)
        # the key appears three times and a digit is at most one token (plus one where a space or period joins it)
        fixed = len(self.head) + len(self.question) + len(encode(tokenizer, NEEDLE.format(key=""))) + \
            len(encode(tokenizer, ANSWER.format(key=""))) + 1 + 3 * (key_digits + 1)
        if fixed >= seq_len + 1:
            raise ValueError(f"data.passkey needs data.seq_len above {fixed} tokens (instruction, needle, question "
                             f"and answer take {fixed}); got {seq_len}")
        if len(stream) < seq_len + 1:
            raise ValueError(f"the training text ({len(stream)} tokens) is shorter than one passkey row of "
                             f"{seq_len + 1} tokens")

    def __len__(self) -> int:
        return self.rows

    def row(self, position: int) -> tuple[list[int], str, int]:
        """(the row's seq_len + 1 ids, its key, the index of the needle's first token)."""
        rng = np.random.default_rng([self.seed, 1 << 21, position])
        key = random_key(rng, self.key_digits)
        needle = encode(self.tokenizer, NEEDLE.format(key=key))
        answer = encode(self.tokenizer, ANSWER.format(key=key)) + [self.eos_id]
        haystack_len = self.seq_len + 1 - len(self.head) - len(needle) - len(self.question) - len(answer)
        start = int(rng.integers(0, len(self.stream) - haystack_len + 1))
        window = np.asarray(self.stream[start:start + haystack_len], dtype=np.int64).tolist()
        depth = int(rng.integers(0, haystack_len + 1))
        ids = self.head + window[:depth] + needle + window[depth:] + self.question + answer
        return ids, key, len(self.head) + depth

    def sequences(self, positions: Sequence[int] | np.ndarray) -> torch.Tensor:
        rows = [self.row(position)[0] for position in np.asarray(positions, dtype=np.int64).reshape(-1).tolist()]
        return torch.tensor(rows, dtype=torch.long)
