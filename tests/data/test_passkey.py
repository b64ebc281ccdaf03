"""Passkey training rows (data/passkey.py): NIAH's prompt format over real text, exact lengths, pure in the position,
and the trainer's `data.passkey` share."""
import numpy as np
import pytest

from slimkv.data.passkey import ANSWER, INSTRUCTION, NEEDLE, QUESTION, PasskeySequences, encode
from slimkv.train.batches import MixtureSource
from slimkv.train.config import DataConfig
from slimkv.train.data_sources import build_sources


@pytest.fixture(scope="module")
def rows(brown_data):
    tokenizer = brown_data.load_tokenizer()
    stream = brown_data.tokens("train")
    return tokenizer, stream, PasskeySequences(tokenizer, stream, 256, brown_data.eos_id, brown_data.vocab_size, seed=3)


def test_a_row_is_the_niah_prompt_over_a_window_of_the_text_then_its_answer(rows, brown_data):
    tokenizer, stream, source = rows
    head, question = encode(tokenizer, INSTRUCTION), encode(tokenizer, QUESTION)
    depths = []
    for position in range(40):
        ids, key, where = source.row(position)
        assert len(ids) == 257 and len(key) == 5 and key.isdigit()
        needle = encode(tokenizer, NEEDLE.format(key=key))
        answer = encode(tokenizer, ANSWER.format(key=key)) + [brown_data.eos_id]
        assert ids[:len(head)] == head and ids[where:where + len(needle)] == needle
        assert ids[-len(answer):] == answer
        assert ids[-len(answer) - len(question):-len(answer)] == question
        # the haystack around the needle is one contiguous window of the training stream
        haystack = ids[len(head):where] + ids[where + len(needle):-len(answer) - len(question)]
        first = np.flatnonzero(stream == haystack[0]) if haystack else []
        assert any(np.array_equal(stream[s:s + len(haystack)], haystack) for s in first)
        depths.append((where - len(head)) / len(haystack))
    # needles land all over the haystack, not at one depth
    assert min(depths) < 0.15 and max(depths) > 0.85
    # the answer decodes to the key the needle holds, which the prompt asks for
    assert tokenizer.decode(ids[-len(answer):-1]).strip() == key


def test_rows_are_a_pure_function_of_the_position(rows, brown_data):
    tokenizer, stream, source = rows
    again = PasskeySequences(tokenizer, stream, 256, brown_data.eos_id, brown_data.vocab_size, seed=3)
    batch = source.sequences(np.array([7, 2, 7]))
    assert batch.shape == (3, 257)
    assert batch[0].tolist() == batch[2].tolist() == again.row(7)[0]
    keys = {source.row(p)[1] for p in range(50)}
    assert len(keys) > 45                                             # a fresh key per row
    other = PasskeySequences(tokenizer, stream, 256, brown_data.eos_id, brown_data.vocab_size, seed=4)
    assert other.row(7)[0] != source.row(7)[0]


def test_too_short_a_row_is_refused_in_one_line(rows, brown_data):
    tokenizer, stream, _ = rows
    with pytest.raises(ValueError, match=r"data.passkey needs data.seq_len above \d+ tokens"):
        PasskeySequences(tokenizer, stream, 32, brown_data.eos_id, brown_data.vocab_size)
    with pytest.raises(ValueError, match="'data.passkey' needs text"):
        DataConfig(source="synthetic", passkey=0.1)


def test_the_trainer_mixes_in_the_passkey_share(brown_data, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(brown_data.corpus.split_path("train").read_text()[:400_000])
    cfg = DataConfig(files=[str(text)], data_dir=str(tmp_path / "data"), seq_len=192, tokenizer_vocab_size=512,
                     passkey=0.1)
    sources = build_sources(cfg)
    assert isinstance(sources.train, MixtureSource) and sources.train.counts == {"text": 18, "passkey": 2}
    batch = sources.train.sequences(np.arange(40))
    assert batch.shape == (40, 193)
    tokenizer = sources.train.components["passkey"].tokenizer
    head = encode(tokenizer, INSTRUCTION)
    is_passkey = [row[:len(head)].tolist() == head for row in batch]
    assert sum(is_passkey) == 4                                       # 2 of every 20 rows
    # the held-out split stays plain text: what perplexity is scored on
    assert not isinstance(sources.heldout, MixtureSource)
