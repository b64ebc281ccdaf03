"""Conversion exactness on tiny random Llama / Qwen2 / Mistral models, selection rules and bad input."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimkv.recurformer.modeling  # noqa: F401  (registers the Auto classes)
from slimkv.recurformer.convert import build_converted, cache_bytes, save_converted, select_units
from slimkv.recurformer.families import attention_geometry

from .conftest import tiny_source


def _ids(batch=2, length=23, vocab=97, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _pruned_reference(source, replaced, ids):
    """The original model with the replaced units' query-head outputs zeroed before o_proj (hooked, not rebuilt)."""
    geo = attention_geometry(source.config)
    handles = []
    for layer_idx, units in enumerate(replaced):
        heads = [h for u in units for h in geo.heads_of_unit(u)]
        if not heads:
            continue

        def zero_slots(module, args, heads=heads):
            x = args[0].unflatten(-1, (geo.num_heads, geo.head_dim)).clone()
            x[..., heads, :] = 0
            return (x.flatten(-2),)

        handles.append(source.model.layers[layer_idx].self_attn.o_proj.register_forward_pre_hook(zero_slots))
    try:
        with torch.no_grad():
            return source(ids).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("mixer", ["mamba2", "ddts", "window"])
def test_ratio_zero_reproduces_original_logits(family, mixer):
    source = tiny_source(family)
    ids = _ids(length=23)
    converted = build_converted(source, [[], []], mixer)
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, source(ids).logits, rtol=0, atol=2e-5)


@pytest.mark.parametrize("mixer", ["mamba2", "ddts"])
def test_zero_init_equals_original_with_replaced_heads_zeroed(family, mixer):
    source = tiny_source(family)
    replaced = [[1], [0]]
    ids = _ids(length=17)
    converted = build_converted(source, replaced, mixer, init="zero")
    with torch.no_grad():
        got = converted(ids).logits
    torch.testing.assert_close(got, _pruned_reference(source, replaced, ids), rtol=0, atol=2e-5)
    # and it is not the unpruned model: the replaced heads mattered
    assert (got - source(ids).logits).abs().max() > 1e-3


def test_window_branch_equals_original_while_the_window_covers_everything(family):
    source = tiny_source(family)
    ids = _ids(length=12)
    # Mistral's own window (6) caps the branch window; its sinks would see past it, so none there
    sinks = 0 if family == "mistral" else 2
    converted = build_converted(source, [[0], [1]], "window", mixer_kwargs={"window": 64, "sinks": sinks})
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, source(ids).logits, rtol=0, atol=2e-5)
    short = build_converted(source, [[0], [1]], "window", mixer_kwargs={"window": 3, "sinks": 1})
    with torch.no_grad():
        assert (short(ids).logits - source(ids).logits).abs().max() > 1e-4


def test_attention_init_reuses_pretrained_rows():
    source = tiny_source("qwen2")
    converted = build_converted(source, [[1], []], "mamba2", init="attention")
    branch = converted.model.layers[0].self_attn.branch
    src = source.model.layers[0].self_attn
    torch.testing.assert_close(branch.c_proj.weight, src.q_proj.weight[32:64])
    torch.testing.assert_close(branch.c_proj.bias, src.q_proj.bias[32:64])
    torch.testing.assert_close(branch.b_proj.weight, src.k_proj.weight[16:32])
    torch.testing.assert_close(branch.x_proj.weight, torch.cat([src.v_proj.weight[16:32]] * 2))
    assert not branch.conv_activation
    ids = _ids(length=9)
    with torch.no_grad():
        assert torch.isfinite(converted(ids).logits).all()


def test_kept_rows_are_bit_identical_slices():
    source = tiny_source("llama")
    converted = build_converted(source, [[0], [1]], "mamba2")
    for idx, (src, new) in enumerate(zip(source.model.layers, converted.model.layers)):
        kept_unit = 1 - idx
        assert torch.equal(new.self_attn.k_proj.weight, src.self_attn.k_proj.weight[kept_unit * 16:(kept_unit + 1) * 16])
        assert torch.equal(new.self_attn.o_proj.weight, src.self_attn.o_proj.weight)
        assert torch.equal(new.mlp.down_proj.weight, src.mlp.down_proj.weight)


def test_save_and_from_pretrained_roundtrip(tmp_path):
    source = tiny_source("mistral")
    converted = build_converted(source, [[1], [0]], "mamba2", init="attention")
    save_converted(converted, None, tmp_path / "out", {"mixer": "mamba2"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(loaded).__name__ == "RecurFormerForCausalLM"
    assert loaded.config.replaced_units == [[1], [0]]
    ids = _ids(length=11)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, converted(ids).logits)
    assert json.loads((tmp_path / "out" / "conversion.json").read_text()) == {"mixer": "mamba2"}


def test_select_units_ratio_ranks_globally_and_keeps_one_unit_per_layer():
    scores = [[0.9, 0.8, 0.1], [0.2, 0.3, 0.25], [0.95, 0.5, 0.4]]
    assert select_units(scores, ratio=0.0) == [[], [], []]
    # 4 of 9: 0.95, 0.9, 0.8, 0.5 - and layer 0 still keeps unit 2
    assert select_units(scores, ratio=0.45) == [[0, 1], [], [0, 1]]
    # 6 of 9 would take all of layer 0 and 2; each layer keeps its least recency-aware unit
    assert select_units(scores, ratio=0.67) == [[0, 1], [1, 2], [0, 1]]
    assert select_units(scores, threshold=0.45) == [[0, 1], [], [0, 1]]
    random_pick = select_units(scores, ratio=0.45, strategy="random", seed=3)
    assert sum(map(len, random_pick)) == 4 and all(len(u) <= 2 for u in random_pick)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        select_units([[0.5, 0.5]], ratio=ratio)


def test_single_kv_unit_layers_need_an_explicit_flag():
    scores = [[0.9], [0.2]]
    with pytest.raises(ValueError, match="single KV unit.*--allow-empty-layers"):
        select_units(scores, ratio=0.5)
    assert select_units(scores, ratio=0.5, allow_empty_layers=True) == [[0], []]
    source = tiny_source("llama", num_kv_heads=1)
    converted = build_converted(source, [[0], []], "mamba2")
    assert converted.model.layers[0].self_attn.kept_units == []
    with torch.no_grad():
        assert torch.isfinite(converted(_ids(length=7)).logits).all()


def test_unsupported_family_lists_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*llama, qwen2, mistral"):
        build_converted(gpt2, [[]], "mamba2")


def test_cache_bytes_count_kept_units_and_constant_state():
    source = tiny_source("llama")
    geo = attention_geometry(source.config)
    full = cache_bytes(source, 1000)
    assert full == 2 * geo.num_layers * geo.num_kv_heads * geo.head_dim * 1000 * 4
    converted = build_converted(source, [[1], [0]], "mamba2")
    # half the units kept: the KV part halves, the state part does not grow with T
    state = cache_bytes(converted, 0)
    assert state > 0
    assert cache_bytes(converted, 1000) == full // 2 + state
    assert cache_bytes(converted, 2000) - cache_bytes(converted, 1000) == full // 2
