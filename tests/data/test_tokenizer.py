"""Byte-level BPE: training, HF loading, round trips on real text, and bad corpus files."""
import pytest
from transformers import PreTrainedTokenizerFast

from slimkv.data import EOS_TOKEN, document_separator_id, load_tokenizer, read_corpus_text, train_tokenizer
from slimkv.data.tokenizer import iter_documents, save_tokenizer, tokenizer_sha256

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.\n\nCafé naïve — ünïcödé “quotes” ok.\n\n\n"
        "However little known the feelings or views of such a man may be on his first entering a neighbourhood.\n")


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "train.txt").write_text(TEXT * 20, encoding="utf-8")
    tokenizer = train_tokenizer(folder / "train.txt", vocab_size=300, save_dir=folder / "bpe", progress=False)
    return tokenizer, folder / "bpe"


def test_train_tokenizer_vocab_and_special_token(small_tokenizer):
    tokenizer, _ = small_tokenizer
    assert tokenizer.get_vocab_size() == 300
    assert tokenizer.token_to_id(EOS_TOKEN) == 0
    # every byte is a symbol, so no text is unknown
    ids = tokenizer.encode("\x01 zzqx ☃", add_special_tokens=False).ids
    assert tokenizer.decode(ids) == "\x01 zzqx ☃"


def test_saved_tokenizer_loads_in_transformers(small_tokenizer):
    tokenizer, folder = small_tokenizer
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in TEXT.split("\n\n"):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text
    from_file, from_folder = load_tokenizer(folder / "tokenizer.json"), load_tokenizer(folder)
    assert from_folder.eos_token == from_file.eos_token == EOS_TOKEN
    assert document_separator_id(from_file) == document_separator_id(from_folder) == 0
    assert tokenizer_sha256(from_folder.backend_tokenizer) == tokenizer_sha256(tokenizer)


@pytest.mark.network
def test_round_trip_on_real_text(brown_data):
    tokenizer = brown_data.load_tokenizer()
    heldout = brown_data.corpus.split_path("heldout").read_text("utf-8")[:20000]
    ids = tokenizer.encode(heldout, add_special_tokens=False)
    assert tokenizer.decode(ids) == heldout
    # a 512-token BPE still compresses English: more than 2 bytes per token
    assert len(heldout.encode()) / len(ids) > 2.0


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer files"):
        load_tokenizer(tmp_path)


def test_empty_corpus_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        train_tokenizer(empty, vocab_size=300, progress=False)
    with pytest.raises(ValueError, match="is empty"):
        read_corpus_text(empty, on_invalid="skip")


def test_non_utf8_fails_by_default_and_skips_with_a_count(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("naïve café\n\n\nsecond".encode("utf-8") + b" caf\xe9 \xff\xfe end")
    with pytest.raises(ValueError, match=r"not valid UTF-8 \(byte 25:"):
        read_corpus_text(bad)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        train_tokenizer(bad, vocab_size=300, progress=False)
    text, skipped = read_corpus_text(bad, on_invalid="skip")
    assert skipped == 3 and text.endswith("second caf  end")
    assert list(iter_documents(bad, on_invalid="skip")) == ["naïve café", "second caf  end"]


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be at least 258"):
        train_tokenizer(tmp_path / "x.txt", vocab_size=100)


def test_save_tokenizer_writes_config(small_tokenizer, tmp_path):
    tokenizer, _ = small_tokenizer
    path = save_tokenizer(tokenizer, tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer_config.json").is_file()
    assert load_tokenizer(path).convert_tokens_to_ids(EOS_TOKEN) == 0
