"""Perplexity walkers against plain references: carried state == one long forward; sliding == per-token contexts."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from slimkv.eval.perplexity import perplexity, token_nll
from slimkv.train.config import ModelConfig
from slimkv.train.factory import build_model


def tiny(arch, max_positions=64):
    cfg = ModelConfig(arch=arch, hidden_size=32, num_hidden_layers=2, num_heads=2, mem_size=8, window_size=16,
                      max_position_embeddings=max_positions)
    return build_model(cfg, vocab_size=50, seed=1).eval()


def full_nll(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0].float()
    return F.cross_entropy(logits[:-1], ids[1:], reduction="sum").item()


@pytest.mark.parametrize("arch", ["rodimus", "rodimus_plus"])
@pytest.mark.parametrize("seq_len", [7, 16])
def test_recurrent_windows_equal_one_long_forward(arch, seq_len):
    model = tiny(arch)
    ids = torch.randint(0, 50, (45,))
    nll, count = token_nll(model, ids, seq_len=seq_len, mode="recurrent")
    assert count == 44
    assert nll == pytest.approx(full_nll(model, ids), rel=1e-5)


@pytest.mark.parametrize("arch", ["rodimus", "rodimus_plus"])
def test_long_text_is_walked_as_a_batch_of_contiguous_pieces(arch):
    # 130 tokens, windows of 8: 4 pieces of 33 tokens (the last one 31) walked side by side; positions of
    # Rodimus+ stream past max_position_embeddings=20 through the cache
    model = tiny(arch, max_positions=20)
    ids = torch.randint(0, 50, (130,))
    nll, count = token_nll(model, ids, seq_len=8, mode="recurrent")
    reference = tiny(arch, max_positions=200)
    expected, previous_last = 0.0, None
    for start in range(0, 130, 33):
        piece = ids[start:start + 33]
        with torch.no_grad():
            logits = reference(input_ids=piece[None], use_cache=False).logits[0].float()
        if previous_last is not None:
            expected += F.cross_entropy(previous_last[None], piece[:1], reduction="sum").item()
        expected += F.cross_entropy(logits[:-1], piece[1:], reduction="sum").item()
        previous_last = logits[-1]
    assert count == 129 and nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("length, seq_len, stride", [(30, 8, 3), (30, 8, 8), (9, 8, 5), (5, 8, 4), (2, 8, 8)])
def test_sliding_window_matches_per_token_contexts(length, seq_len, stride):
    model = tiny("llama")
    ids = torch.randint(0, 50, (length,))
    nll, count = token_nll(model, ids, seq_len=seq_len, stride=stride, mode="sliding")
    # reference: token t is predicted by the first input window [b, b + seq_len) (b a multiple of stride) whose
    # targets b + 1 .. b + seq_len reach it, from the context ids[b:t]
    expected = 0.0
    for t in range(1, length):
        begin = 0
        while min(begin + seq_len, length - 1) < t:
            begin += stride
        context = ids[begin:t]
        assert 1 <= len(context) <= seq_len
        with torch.no_grad():
            logits = model(input_ids=context[None], use_cache=False).logits[0, -1].float()
        expected += F.cross_entropy(logits[None], ids[t:t + 1], reduction="sum").item()
    assert count == length - 1
    assert nll == pytest.approx(expected, rel=1e-5)


def test_byte_level_numbers():
    model = tiny("rodimus")
    ids = torch.randint(0, 50, (40,))
    result = perplexity(model, ids, num_bytes=100, seq_len=16)
    assert result.tokens == 39
    assert result.bits_per_byte == pytest.approx(result.nll_nats / (math.log(2) * 100))
    assert result.byte_ppl == pytest.approx(math.exp(result.nll_nats / 100))
    assert result.token_ppl == pytest.approx(math.exp(result.nll_nats / 39))
    assert json.loads(json.dumps(result.as_dict()))["mode"] == "recurrent"


def test_bad_lengths_are_value_errors():
    model = tiny("llama", max_positions=32)
    ids = torch.randint(0, 50, (40,))
    with pytest.raises(ValueError, match="--seq-len 64 exceeds the model's position limit max_position_embeddings=32"):
        token_nll(model, ids, seq_len=64)
    with pytest.raises(ValueError, match="--stride must lie in"):
        token_nll(model, ids, seq_len=16, stride=17)
    with pytest.raises(ValueError, match="too short"):
        token_nll(model, ids[:1], seq_len=16)
