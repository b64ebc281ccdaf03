"""Hybrid cache: greedy generate with the cache == full recompute per step; left padding does not leak; bytes."""
import pytest
import torch

from slimkv.recurformer.cache import RecurFormerCache
from slimkv.recurformer.convert import build_converted, cache_bytes

from .conftest import tiny_source

MIXER_KWARGS = {"mamba2": {}, "ddts": {}, "window": {"window": 4, "sinks": 2}}


def _converted(family, mixer, replaced=((1,), (0,))):
    source = tiny_source(family)
    model = build_converted(source, [list(u) for u in replaced], mixer, mixer_kwargs=MIXER_KWARGS[mixer])
    # zero-init branches output nothing; make them matter so the cache path is really exercised
    with torch.no_grad():
        for layer in model.model.layers:
            branch = layer.self_attn.branch
            if branch is not None and hasattr(branch, "out_proj"):
                branch.out_proj.weight.normal_(0, 0.3)
    return model


def _greedy_by_recompute(model, ids, mask, steps):
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat((ids, nxt), dim=1)
        mask = torch.cat((mask, torch.ones_like(nxt)), dim=1)
    return ids


@pytest.mark.parametrize("family,mixer", [("llama", "mamba2"), ("qwen2", "ddts"), ("mistral", "window"),
                                          ("llama", "window"), ("mistral", "mamba2")])
def test_generate_with_cache_equals_recompute_with_left_padding(family, mixer):
    model = _converted(family, mixer)
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding; row 0 has 6 real tokens (more than the 2 sinks)
    mask[1, :9] = 0  # a one-token prompt: sinks fill up during decoding
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    expected = _greedy_by_recompute(model, ids, mask, 12)
    assert torch.equal(out, expected)
    # no leak: the padded rows generate what they generate alone, without padding
    for row in (0, 1):
        alone = ids[row:row + 1, mask[row].bool()]
        with torch.no_grad():
            solo = model.generate(alone, attention_mask=torch.ones_like(alone), max_new_tokens=12, do_sample=False,
                                  pad_token_id=0)
        assert torch.equal(out[row, 10:], solo[0, alone.shape[1]:])


@pytest.mark.parametrize("mixer", ["mamba2", "ddts", "window"])
def test_left_padded_logits_equal_unpadded(mixer):
    model = _converted("llama", mixer)
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    padded = torch.cat((torch.full((1, 5), 7), ids), dim=1)
    mask = torch.cat((torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 5:], model(ids).logits,
                                   rtol=0, atol=1e-5)


def test_prefill_then_step_matches_full_forward():
    model = _converted("qwen2", "mamba2")
    ids = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :11], use_cache=True)
        cache, steps = out.past_key_values, [out.logits]
        for t in range(11, 15):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one token at a time"):
        model(ids[:, :2], past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("mixer", ["mamba2", "ddts", "window"])
def test_counted_bytes_equal_the_live_cache(mixer):
    model = _converted("llama", mixer)
    source = tiny_source("llama")
    for T in (13, 40):
        ids = torch.randint(0, 97, (1, T))
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
            full_cache = source(ids, use_cache=True).past_key_values
        assert isinstance(cache, RecurFormerCache)
        assert cache.nbytes() == cache_bytes(model, T)
        hf_bytes = sum(layer.keys.numel() * 4 + layer.values.numel() * 4 for layer in full_cache.layers)
        assert hf_bytes == cache_bytes(source, T)
