"""Token shards, PackedDataset order / resume / rank sharding, unigram baseline, prepare_data caching."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkv.data import (PackedDataset, bits_per_byte, encode_split_file, load_shard, prepare_data,
                         read_split_documents, unigram_perplexity, write_shard)


def stream(num_tokens=1000, vocab_size=50, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, num_tokens).astype(np.uint16)


@pytest.mark.parametrize("vocab_size, dtype", [(512, "uint16"), (65536, "uint16"), (70000, "uint32")])
def test_shard_round_trip(tmp_path, vocab_size, dtype):
    tokens = np.array([0, 1, vocab_size - 1, 7, 0], dtype=np.int64)
    meta = write_shard(tokens, tmp_path / "s.bin", {"vocab_size": vocab_size})
    loaded, meta_read = load_shard(tmp_path / "s.bin", verify=True)
    assert meta == meta_read and meta["dtype"] == dtype and meta["num_tokens"] == 5
    assert loaded.dtype == np.dtype(dtype) and np.array_equal(np.asarray(loaded, dtype=np.int64), tokens)


def test_shard_damage_is_detected(tmp_path):
    write_shard(np.arange(10), tmp_path / "s.bin", {"vocab_size": 10})
    raw = (tmp_path / "s.bin").read_bytes()
    (tmp_path / "s.bin").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="damaged: 18 bytes, meta says 20"):
        load_shard(tmp_path / "s.bin")
    (tmp_path / "s.bin").write_bytes(raw[:-2] + b"\x00\x00")
    with pytest.raises(ValueError, match="sha256 differs"):
        load_shard(tmp_path / "s.bin", verify=True)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\)"):
        write_shard(np.arange(10), tmp_path / "t.bin", {"vocab_size": 5})


def test_packed_sequences_are_windows_of_the_stream():
    tokens = stream(1001)
    ds = PackedDataset(tokens, seq_len=10, seed=3)
    assert len(ds) == 100
    rows = ds.sequences(np.arange(100)).numpy()
    starts = sorted(int(np.flatnonzero([np.array_equal(tokens[j * 10: j * 10 + 11], row) for j in range(100)])[0])
                    for row in rows[:5])
    assert len(set(starts)) == 5
    # one epoch visits every sequence exactly once
    firsts = {tuple(row) for row in rows}
    assert firsts == {tuple(tokens[j * 10: j * 10 + 11].astype(np.int64)) for j in range(100)}
    inputs, labels = ds.batch(0, 4)
    assert inputs.shape == labels.shape == (4, 10) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], labels[:, :-1])


def test_order_is_deterministic_and_seeded():
    tokens = stream()
    a, b, c = (PackedDataset(tokens, 16, seed=s) for s in (1, 1, 2))
    for step in (0, 5, 17):
        assert torch.equal(a.batch(step, 8)[0], b.batch(step, 8)[0])
    assert not torch.equal(a.sequences(np.arange(len(a))), c.sequences(np.arange(len(c))))
    in_order = PackedDataset(tokens, 16, shuffle=False)
    assert torch.equal(in_order.sequences([0, 1])[:, :16], torch.from_numpy(tokens[:32].astype(np.int64)).view(2, 16))
    # the next epoch is reshuffled, not repeated
    n = len(a)
    assert not torch.equal(a.sequences(np.arange(n)), a.sequences(np.arange(n, 2 * n)))


@settings(max_examples=25, deadline=None)
@given(world_size=st.sampled_from([1, 2, 3, 4]), per_rank=st.integers(1, 5), step=st.integers(0, 40),
       seed=st.integers(0, 3))
def test_rank_slices_union_is_the_global_batch(world_size, per_rank, step, seed):
    ds = PackedDataset(stream(700), seq_len=16, seed=seed)
    batch_size = per_rank * world_size
    global_inputs, global_labels = ds.batch(step, batch_size)
    parts = [ds.batch(step, batch_size, rank, world_size) for rank in range(world_size)]
    assert torch.equal(torch.cat([p[0] for p in parts]), global_inputs)
    assert torch.equal(torch.cat([p[1] for p in parts]), global_labels)
    positions = [set(ds.rank_positions(step, batch_size, r, world_size).tolist()) for r in range(world_size)]
    assert sum(len(p) for p in positions) == len(set().union(*positions)) == batch_size


def test_resume_from_state_dict_continues_exactly():
    tokens = stream(2000)
    run = PackedDataset(tokens, 8, seed=5)
    for _ in range(3):
        run.next_batch(6)
    state = run.state_dict()
    resumed = PackedDataset(tokens, 8, seed=5)
    resumed.load_state_dict(state)
    for _ in range(40):
        assert torch.equal(run.next_batch(6, rank=1, world_size=2)[1], resumed.next_batch(6, rank=1, world_size=2)[1])
    with pytest.raises(ValueError, match="seed=5, this dataset has 6"):
        PackedDataset(tokens, 8, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="multiple of world_size"):
        run.batch(0, 5, rank=0, world_size=2)


def test_corpus_too_small_for_one_sequence():
    with pytest.raises(ValueError, match="too few for one sequence of seq_len \\+ 1 = 11 tokens"):
        PackedDataset(np.arange(10), seq_len=10)
    assert len(PackedDataset(np.arange(11), seq_len=10)) == 1


def test_unigram_perplexity_by_hand():
    # counts of train [0, 0, 1, 2] over V=4 with add-one: p = (3, 2, 2, 1) / 8
    ppl = unigram_perplexity(np.array([0, 0, 1, 2]), np.array([0, 3]), vocab_size=4)
    assert ppl == pytest.approx(math.exp(-(math.log(3 / 8) + math.log(1 / 8)) / 2)) == pytest.approx(8 / 3 ** 0.5)
    # alpha -> large makes the model uniform
    assert unigram_perplexity(np.array([0]), np.array([1, 2]), 4, alpha=1e9) == pytest.approx(4.0)
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="non-empty"):
        unigram_perplexity(np.array([], dtype=np.int64), np.array([1]), 4)
    with pytest.raises(ValueError, match=r"held-out token ids must lie in \[0, 4\)"):
        unigram_perplexity(np.array([0]), np.array([4]), 4)


@pytest.mark.network
def test_real_shards_hold_the_documents(brown_data):
    tokenizer = brown_data.load_tokenizer()
    tokens, meta = load_shard(brown_data.shards["heldout"], verify=True)
    eos_positions = np.flatnonzero(np.asarray(tokens) == brown_data.eos_id)
    docs = read_split_documents(brown_data.corpus, "heldout")
    assert len(eos_positions) == meta["num_documents"] == len(docs) == 39
    assert tokenizer.decode(np.asarray(tokens[:eos_positions[0]]).tolist()) == docs[0]
    assert meta["num_bytes"] == sum(len(doc.encode()) for doc in docs)
    assert meta["dtype"] == "uint16" and brown_data.vocab_size == 512
    unigram = brown_data.unigram_perplexity()
    # a unigram model beats uniform guessing over 512 tokens, but not by much
    assert 50 < unigram < 512


@pytest.mark.network
def test_prepare_data_is_cached_and_checks_seq_len(brown_data):
    shard = brown_data.shards["train"]
    before = shard.stat().st_mtime_ns
    again = prepare_data(brown_data.data_dir, vocab_size=512, seq_len=64, sources="brown", progress=False)
    assert shard.stat().st_mtime_ns == before and "tokenizer_train" not in again.timings
    assert again.summary()["splits"] == brown_data.summary()["splits"]
    train = again.dataset("train", seed=0)
    assert torch.equal(train.batch(3, 4)[0], brown_data.dataset("train", seed=0).batch(3, 4)[0])
    with pytest.raises(ValueError, match="heldout split has .* too few for one sequence"):
        prepare_data(brown_data.data_dir, vocab_size=512, seq_len=10**6, sources="brown", progress=False)


@pytest.mark.network
def test_encode_split_file_bad_input(brown_data, tmp_path):
    tokenizer = brown_data.load_tokenizer()
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        encode_split_file(tmp_path / "empty.txt", tokenizer, tmp_path / "e.bin", progress=False)
    (tmp_path / "bad.txt").write_bytes(b"good text\xff\n\n\nmore")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        encode_split_file(tmp_path / "bad.txt", tokenizer, tmp_path / "b.bin", progress=False)
    meta = encode_split_file(tmp_path / "bad.txt", tokenizer, tmp_path / "b.bin", on_invalid="skip", progress=False)
    assert meta["skipped_invalid_bytes"] == 1 and meta["num_documents"] == 2
