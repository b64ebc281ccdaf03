"""The RecurFormer model on tiny random Llama / Qwen2 / Mistral sources: conversion exactness, the preallocated hybrid
cache (cached == recompute, left padding, counted bytes == live bytes), and the decode step generate() replays."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimkv  # noqa: F401  (registers the Auto classes)
from slimkv.models.recurformer import RecurFormerForCausalLM, attention_geometry
from slimkv.recurformer.convert import build_converted, cache_bytes, save_converted

from tests.models.test_generation import Spy

from .conftest import tiny_source

OPTIONS = {"mamba2": {}, "ddts": {}, "window": {"window": 4, "sinks": 2}, "window_mamba2": {"window": 4, "sinks": 2}}
# (family, branch): every family and every branch at least once; Mistral's own window (6) wraps its kept ring
CASES = [("llama", "mamba2"), ("qwen2", "ddts"), ("mistral", "window"), ("llama", "window"), ("mistral", "mamba2"),
         ("qwen2", "window"), ("qwen2", "window_mamba2"), ("mistral", "window_mamba2")]


def _ids(batch=2, length=23, seed=1):
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def converted(family, mixer, replaced=((1,), (0,)), **kwargs):
    model = build_converted(tiny_source(family), [list(u) for u in replaced], mixer,
                            mixer_kwargs=kwargs or OPTIONS[mixer])
    # zero-init branches output nothing: make them matter, so the cache path is really exercised
    with torch.no_grad():
        for layer in model.model.layers:
            branch = layer.self_attn.branch
            branch = getattr(branch, "recurrent", branch)  # window_mamba2's Mamba2 part
            if branch is not None and hasattr(branch, "out_proj"):
                branch.out_proj.weight.normal_(0, 0.3)
    return model


def pruned_reference(source, replaced, ids):
    """The source with the replaced units' query-head outputs zeroed before o_proj (hooked, not rebuilt)."""
    geo = attention_geometry(source.config)
    handles = []
    for layer_idx, units in enumerate(replaced):
        heads = geo.heads_of_units(list(units))

        def zero_slots(module, args, heads=heads):
            x = args[0].unflatten(-1, (geo.num_heads, geo.head_dim)).clone()
            x[..., heads, :] = 0
            return (x.flatten(-2),)

        if heads:
            handles.append(source.model.layers[layer_idx].self_attn.o_proj.register_forward_pre_hook(zero_slots))
    try:
        with torch.no_grad():
            return source(ids).logits
    finally:
        for handle in handles:
            handle.remove()


def recompute_greedy(model, ids, mask, steps):
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(ids, attention_mask=mask, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat((ids, nxt), 1), torch.cat((mask, torch.ones_like(nxt)), 1)
    return ids


@pytest.mark.parametrize("mixer", ["mamba2", "ddts", "window", "window_mamba2"])
def test_ratio_zero_reproduces_the_source(family, mixer):
    source = tiny_source(family)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(build_converted(source, [[], []], mixer)(ids).logits, source(ids).logits,
                                   rtol=0, atol=2e-5)


@pytest.mark.parametrize("mixer", ["mamba2", "ddts"])
def test_zero_init_equals_the_source_with_the_replaced_heads_pruned(family, mixer):
    source = tiny_source(family)
    ids = _ids(length=17)
    with torch.no_grad():
        got = build_converted(source, [[1], [0]], mixer, init="zero")(ids).logits
        torch.testing.assert_close(got, pruned_reference(source, [[1], [0]], ids), rtol=0, atol=2e-5)
        # and the heads mattered
        assert (got - source(ids).logits).abs().max() > 1e-3


def test_window_mamba2_at_zero_init_is_the_window_branch_and_its_state_adds_to_it(family):
    source = tiny_source(family)
    ids = _ids()
    options = {"window": 4, "sinks": 2}
    hybrid = build_converted(source, [[1], [0]], "window_mamba2", mixer_kwargs=options)
    window = build_converted(tiny_source(family), [[1], [0]], "window", mixer_kwargs=options)
    with torch.no_grad():
        assert torch.equal(hybrid(ids).logits, window(ids).logits)
        # once the Mamba2 part outputs something, the model differs from the window branch: the sum is live
        hybrid.model.layers[0].self_attn.branch.recurrent.out_proj.weight.normal_(0, 0.3)
        assert (hybrid(ids).logits - window(ids).logits).abs().max() > 1e-3
    shapes = hybrid.model.layers[0].self_attn.branch.state_shapes(3)
    assert set(shapes) == {"branch_key", "branch_value", "branch_valid", "conv_state", "ssm_state"}
    with pytest.raises(ValueError, match="zero output"):
        build_converted(source, [[1], [0]], "window_mamba2", init="attention", mixer_kwargs=options)


def test_window_branches_ask_for_bucketed_lengths(monkeypatch):
    """Evaluations of the window branches meet many lengths; their attention asks ops/window_attn for power-of-two
    buckets (a no-op off CUDA), on the sequence path and on the path that continues a cache."""
    import slimkv.layers.branch_window as branch_window

    asked = []
    real = branch_window.window_attention
    monkeypatch.setattr(branch_window, "window_attention",
                        lambda *a, bucket_lengths=False, **kw: asked.append(bucket_lengths) or real(*a, **kw))
    model = converted("llama", "window_mamba2")
    ids = _ids()
    with torch.no_grad():
        model(ids)
        model.generate(ids, max_new_tokens=2, do_sample=False)
    assert asked and all(asked)


def test_window_branch_equals_the_source_while_its_window_covers_everything(family):
    source = tiny_source(family)
    ids = _ids(length=12)
    # Mistral's own window (6) caps the branch window, and sinks would see past it there
    wide = build_converted(source, [[0], [1]], "window", mixer_kwargs={"window": 64,
                                                                        "sinks": 0 if family == "mistral" else 2})
    short = build_converted(source, [[0], [1]], "window", mixer_kwargs={"window": 3, "sinks": 1})
    with torch.no_grad():
        torch.testing.assert_close(wide(ids).logits, source(ids).logits, rtol=0, atol=2e-5)
        assert (short(ids).logits - source(ids).logits).abs().max() > 1e-4


@pytest.mark.parametrize("family,mixer", CASES)
def test_generate_with_the_cache_equals_recompute_with_left_padding(family, mixer, monkeypatch):
    model = converted(family, mixer)
    ids = _ids(3, 10, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # 6 real tokens: more than the 2 sinks
    mask[1, :9] = 0  # a one-token prompt: its sinks fill up while decoding
    ids = ids.masked_fill(mask == 0, 0)
    expected = recompute_greedy(model, ids, mask, 12)
    spy = Spy(model, monkeypatch)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(out, expected)
    assert spy.forward_tokens == [10] and spy.steps == 11  # one prefill, then one token per decode step
    for row in (0, 1):
        # no leak: a padded row generates what it generates alone
        alone = ids[row:row + 1, mask[row].bool()]
        solo = model.generate(alone, max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(out[row, 10:], solo[0, alone.shape[1]:])


def test_transformers_loop_uses_the_same_cache(monkeypatch):
    """Settings the fast loop does not implement (output_scores) go to transformers' loop: same tokens, cached."""
    model = converted("qwen2", "mamba2")
    ids = _ids(1, 11)
    fast = model.generate(ids, max_new_tokens=9, do_sample=False)
    spy = Spy(model, monkeypatch)
    out = model.generate(ids, max_new_tokens=9, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, fast) and spy.forward_tokens == [11] + [1] * 8


@pytest.mark.parametrize("mixer", ["mamba2", "ddts", "window", "window_mamba2"])
def test_left_padded_logits_equal_unpadded(mixer):
    model = converted("llama", mixer)
    ids = _ids(1, 9, seed=2)
    padded = torch.cat((torch.full((1, 5), 7), ids), 1)
    mask = torch.cat((torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)), 1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 5:], model(ids).logits, rtol=0,
                                   atol=1e-5)


@pytest.mark.parametrize("family,mixer", CASES)
def test_prefill_steps_and_chunks_continue_the_cache_exactly(family, mixer):
    model = converted(family, mixer)
    ids = _ids(2, 21, seed=4)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :9], use_cache=True)
        cache, parts = out.past_key_values, [out.logits]
        for t in range(9, 13):
            parts.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
        parts.append(model(ids[:, 13:], past_key_values=cache, use_cache=True).logits)  # a chunk after steps
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)
    assert cache.seen_tokens == 21 and cache.next_position.tolist() == [21, 21]


def test_a_full_static_cache_refuses_more_tokens():
    model = converted("llama", "mamba2")
    cache = model.allocate_cache(1, capacity=8)
    with torch.no_grad():
        model(_ids(1, 8), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="has room for 0 more"):
            model(_ids(1, 1), past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("family,mixer", CASES)
def test_counted_bytes_equal_the_live_cache(family, mixer):
    model = converted(family, mixer)
    source = tiny_source(family)
    for T in (13, 40):
        ids = _ids(1, T)
        cache = model.allocate_cache(1, capacity=T)
        pointers = [t.data_ptr() for entry in cache.layers for t in entry.values()]
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
            if family == "mistral":
                # its kept units hold a window: decoding past it wraps the ring instead of growing
                model(_ids(1, 1), past_key_values=cache, use_cache=True)
            hf_cache = source(ids, use_cache=True).past_key_values
        assert cache.nbytes() == cache_bytes(model, T)
        # written in place: no buffer was reallocated by the prefill or the step
        assert [t.data_ptr() for entry in cache.layers for t in entry.values()] == pointers
        if family != "mistral":  # HF's Mistral cache keeps every token; ours keeps its window
            hf = sum(layer.keys.numel() * 4 + layer.values.numel() * 4 for layer in hf_cache.layers)
            assert hf == cache_bytes(source, T)
    if family != "mistral":
        # one of two units kept per layer: each token costs half the source's K/V plus a validity byte per layer,
        # and the branch state does not grow
        grown = cache_bytes(model, 2000) - cache_bytes(model, 1000)
        assert grown == (cache_bytes(source, 2000) - cache_bytes(source, 1000)) // 2 + 1000 * 2
        assert cache_bytes(model, 0) > 0


@pytest.mark.parametrize("mixer", ["window", "window_mamba2"])
def test_decode_step_is_graph_safe(mixer):
    """What generate() captures: traceable with no graph break (no host syncs or data-dependent Python), reading
    only device counters (the host counter may be stale), writing the cache in place."""
    model = converted("qwen2", mixer)
    ids = _ids(2, 7)
    cache = model.allocate_cache(2, capacity=32)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    twin = cache.clone()
    tokens = torch.tensor([3, 5])
    compiled = torch.compile(model.model.decode_step, backend="eager", fullgraph=True)
    cache.seen_tokens = -99  # a graph replay never updates it: the step must not read it
    pointers = [t.data_ptr() for entry in cache.layers for t in entry.values()]
    with torch.no_grad():
        h = compiled(tokens, cache)
        want = model.model.decode_step(tokens, twin)
    torch.testing.assert_close(h, want, rtol=0, atol=0)
    assert [t.data_ptr() for entry in cache.layers for t in entry.values()] == pointers
    assert cache.seen.item() == 8 and cache.next_position.tolist() == [8, 8]


def test_generate_buckets_the_capacity_and_reuses_it():
    model = converted("llama", "mamba2")
    assert [model.cache_capacity(n) for n in (5, 256, 257, 400, 600)] == [256, 256, 512, 512, 600]
    ids = _ids(1, 10)
    model.generate(ids, max_new_tokens=5, do_sample=False)
    model.generate(ids, max_new_tokens=50, do_sample=False)
    states = list(model._decode_graphs().states.values())
    assert len(states) == 1 and states[0].cache.layers[0]["key_ring"].shape[1] == 256


def test_save_and_from_pretrained_roundtrip(tmp_path):
    model = converted("mistral", "mamba2")
    save_converted(model, None, tmp_path / "out", {"mixer": "mamba2"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert isinstance(loaded, RecurFormerForCausalLM) and loaded.config.replaced_units == [[1], [0]]
    ids = _ids(length=11)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert json.loads((tmp_path / "out" / "conversion.json").read_text()) == {"mixer": "mamba2"}
    shim = json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]
    assert shim["AutoModelForCausalLM"] == "slimkv_auto.RecurFormerForCausalLM"


def test_parameter_names_are_the_source_layout_plus_branch():
    """Folders saved before the model moved into slimkv.models load by name: the layout is the source model's
    (kept q/k/v rows under the same names) plus self_attn.branch.*, nothing else."""
    source = tiny_source("qwen2")
    model = build_converted(source, [[1], []], "window", mixer_kwargs={"window": 4, "sinks": 2})
    names = set(model.state_dict())
    assert names - set(source.state_dict()) == {f"model.layers.0.self_attn.branch.{p}_proj.{w}"
                                                for p in "qkv" for w in ("weight", "bias")}
    assert set(source.state_dict()) - names == set()


@pytest.mark.parametrize("mixer", ["mamba2", "window"])
def test_kept_heads_on_sdpa_equal_the_chunked_path(mixer, monkeypatch):
    """`auto` runs the kept (full causal) heads through SDPA on CUDA (ops/window_attn/sdpa.py): on CPU, named, the
    same logits as the chunked path for a left-padded forward and for a prefill continued by a chunk."""
    import torch.nn.functional as F

    model = converted("qwen2", mixer)
    ids = _ids(2, 15, seed=6)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0

    def run():
        with torch.no_grad():
            padded = model(ids, attention_mask=mask).logits
            out = model(ids[:, :8], use_cache=True)
            chunk = model(ids[:, 8:], past_key_values=out.past_key_values, use_cache=True).logits
        return padded, torch.cat((out.logits, chunk), 1)

    expected = run()
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    for layer in model.model.layers:
        layer.self_attn.attn_backend = "sdpa"
    got = run()
    for mine, spec in zip(got, expected):
        torch.testing.assert_close(mine, spec, rtol=0, atol=1e-5)
    # two layers with kept heads, three forwards each: the kernel really ran
    assert len(calls) == 6


@pytest.mark.parametrize("family,mixer", [("qwen2", "window_mamba2"), ("llama", "mamba2")])
def test_length_curve_walks_the_converted_model_chunk_by_chunk(family, mixer):
    # the experiment's perplexity by position (recurformer/experiments.py, eval/length.py) carries the cache
    # between chunks: it must score what one forward over the whole sequence scores
    from slimkv.eval.length import token_losses

    model = converted(family, mixer).double()
    assert hasattr(model, "allocate_cache")  # the chunked path, not the one-forward fallback
    ids = _ids(batch=2, length=61)
    logits = model(ids, use_cache=False).logits
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(),
                                             reduction="none").view(2, -1)
    got = token_losses(model, ids, chunk=9)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-9)
