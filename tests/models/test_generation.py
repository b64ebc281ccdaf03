"""generate() really uses the constant-size cache: one token per step after the prefill, the same tokens as
recomputing the whole prefix, under both the fast loop (models/generation.py) and transformers' own loop."""
from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import slimkv
from slimkv.models import generation
from slimkv.models.compat import output_cache
from slimkv.models.generation import SamplingPlan, bucket_rows, choose_tokens

VOCAB = 97


def make_model(block_type: str, dtype=torch.float32, **overrides):
    cfg = dict(block_type=block_type, vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, mem_size=16,
               num_heads=2, window_size=8, max_position_embeddings=256)
    cfg.update(overrides)
    torch.manual_seed(0)
    return slimkv.RodimusForCausalLM(slimkv.RodimusConfig(**cfg)).to(dtype).eval()


def recompute_greedy(model, ids: torch.Tensor, new: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The slow truth: the whole prefix through a cache-free forward for every token."""
    mask = torch.ones_like(ids) if mask is None else mask
    for _ in range(new):
        logits = model(ids, attention_mask=mask, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


class Spy:
    """Counts the tokens of every forward call and every decode step a model makes."""

    def __init__(self, model, monkeypatch):
        self.forward_tokens, self.steps = [], 0
        forward, step = model.forward, model.model.decode_step

        def counted_forward(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.forward_tokens.append(ids.shape[1])
            return forward(*args, **kwargs)

        def counted_step(*args, **kwargs):
            self.steps += 1
            return step(*args, **kwargs)

        monkeypatch.setattr(model, "forward", counted_forward)
        monkeypatch.setattr(model.model, "decode_step", counted_step)


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_fast_generate_steps_one_token_at_a_time_and_matches_recompute(block_type, monkeypatch):
    model = make_model(block_type)
    ids = torch.randint(0, VOCAB, (2, 19))  # longer than the window (8): the ring wraps during the prompt
    want = recompute_greedy(model, ids, 12)
    spy = Spy(model, monkeypatch)
    got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert torch.equal(got, want)
    assert spy.forward_tokens == [19]  # one prefill forward ...
    assert spy.steps == 11             # ... then one decode step per further token (the last is never fed)


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_transformers_loop_also_uses_the_cache(block_type, monkeypatch):
    """Anything the fast loop does not implement (here: output_scores) runs transformers' own loop, cached."""
    model = make_model(block_type)
    ids = torch.randint(0, VOCAB, (1, 11))
    fast = model.generate(ids, max_new_tokens=9, do_sample=False)
    spy = Spy(model, monkeypatch)
    out = model.generate(ids, max_new_tokens=9, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, fast)
    assert spy.forward_tokens == [11] + [1] * 8 and spy.steps == 8
    assert len(out.scores) == 9 and output_cache(out).seen_tokens == 11 + 8


@pytest.mark.parametrize("block_type", ["rodimus_plus", "mamba2", "gla"])
def test_left_padded_batch_equals_each_prompt_alone(block_type):
    model = make_model(block_type)
    a, b = torch.randint(0, VOCAB, (1, 13)), torch.randint(0, VOCAB, (1, 6))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 7, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    both = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(both[0], model.generate(a, max_new_tokens=10, do_sample=False)[0])
    assert torch.equal(both[1, 7:], model.generate(b, max_new_tokens=10, do_sample=False)[0])


def test_batch_is_served_by_a_bucket_and_extra_rows_change_nothing():
    model = make_model("rodimus_plus")
    assert [bucket_rows(n) for n in (1, 2, 3, 5, 16, 17, 256, 257)] == [1, 2, 4, 8, 16, 32, 256, 512]
    ids = torch.randint(0, VOCAB, (3, 9))
    together = model.generate(ids, max_new_tokens=7, do_sample=False)
    graphs = model._decode_graphs()
    assert [state.rows for state in graphs.states.values()] == [4]
    for row in range(3):
        assert torch.equal(together[row], model.generate(ids[row:row + 1], max_new_tokens=7, do_sample=False)[0])


def test_cache_bytes_never_change_and_the_state_stays_float32_in_bf16():
    model = make_model("rodimus_plus", dtype=torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 30))
    cache = model.allocate_cache(2)
    before = cache.nbytes()
    pointers = [t.data_ptr() for entry in cache.layers for t in entry.values()]
    model.generate(ids, max_new_tokens=40, do_sample=False, cache=cache)
    assert cache.nbytes() == before and cache.seen_tokens == 30 + 39
    assert [t.data_ptr() for entry in cache.layers for t in entry.values()] == pointers
    for entry in cache.layers:
        assert entry["ssm_state"].dtype == torch.float32 and entry["conv_state"].dtype == torch.bfloat16
        assert entry["ssm_state"].abs().sum() > 0
    # the fast loop's own static bucket cache, and transformers' loop, keep float32 states too
    for state in model._decode_graphs().states.values():
        assert all(entry["ssm_state"].dtype == torch.float32 for entry in state.cache.layers)
    out = model.generate(ids, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert all(entry["ssm_state"].dtype == torch.float32 for entry in output_cache(out).layers)


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_a_cache_carries_over_between_generate_calls(block_type):
    model = make_model(block_type)
    ids = torch.randint(0, VOCAB, (1, 10))
    whole = model.generate(ids, max_new_tokens=16, do_sample=False)
    cache = model.allocate_cache(1)
    first = model.generate(ids, max_new_tokens=7, do_sample=False, cache=cache)
    assert cache.seen_tokens == 10 + 6
    second = model.generate(first, max_new_tokens=9, do_sample=False, past_key_values=cache)
    assert torch.equal(second, whole)
    with pytest.raises(ValueError, match="no new token"):
        model.generate(ids[:, :5], max_new_tokens=2, cache=cache)


def test_eos_stops_pads_and_trims_like_transformers():
    model = make_model("rodimus")
    ids = torch.randint(0, VOCAB, (2, 8))
    free = model.generate(ids, max_new_tokens=12, do_sample=False)
    eos = int(free[0, 8 + 3])  # row 0 emits it as its 4th new token
    fast = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    slow = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True).sequences
    assert torch.equal(fast, slow)
    assert fast[0, 8 + 3] == eos and (fast[0, 8 + 4:] == 0).all()
    held = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0,
                          min_new_tokens=6)
    assert (held[:, 8:8 + 6] != eos).all()


def test_warping_matches_transformers_processors():
    """Temperature, top-k, top-p and min_new_tokens mask exactly the logits transformers' processors mask."""
    torch.manual_seed(1)
    logits = torch.randn(4, VOCAB) * 3
    plan = SamplingPlan(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, eos_token_ids=(3, 5), pad_token_id=0,
                        min_new_tokens=2)
    processors = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(4, 2, [3, 5]), TemperatureLogitsWarper(0.7),
                                      TopKLogitsWarper(20), TopPLogitsWarper(0.8)])
    ids = torch.zeros(4, 5, dtype=torch.long)  # prompt 4 + 1 generated: EOS still masked
    kept = torch.isfinite(processors(ids, logits.clone()))
    draws = torch.stack([choose_tokens(logits, plan, torch.tensor(1), torch.tensor([3, 5])) for _ in range(400)])
    assert kept[torch.arange(4)[None].expand_as(draws), draws].all()  # never a masked token
    assert {int(t) for t in draws[:, 0]} == set(torch.nonzero(kept[0]).flatten().tolist())  # every kept one shows
    greedy = SamplingPlan(False, 1.0, 0, 1.0, (), 0, 0)
    assert torch.equal(choose_tokens(logits, greedy, torch.tensor(0), torch.tensor([], dtype=torch.long)),
                       logits.argmax(-1))


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = make_model("rodimus_plus")
    ids = torch.randint(0, VOCAB, (2, 6))
    torch.manual_seed(5)
    a = model.generate(ids, max_new_tokens=10, do_sample=True, top_k=0, temperature=1.3)
    torch.manual_seed(5)
    b = model.generate(ids, max_new_tokens=10, do_sample=True, top_k=0, temperature=1.3)
    assert torch.equal(a, b) and not torch.equal(a, model.generate(ids, max_new_tokens=10, do_sample=False))
    assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=True, top_k=1),
                       model.generate(ids, max_new_tokens=10, do_sample=False))


def test_triton_decode_kernels_match_the_torch_step_inside_the_model():
    """decode_backend="triton" (interpreter on CPU) gives the torch step's tokens, and really runs the kernels."""
    pytest.importorskip("triton")
    torch_model = make_model("rodimus_plus", window_size=64, hidden_size=64, num_heads=2)
    triton_model = make_model("rodimus_plus", window_size=64, hidden_size=64, num_heads=2, decode_backend="triton")
    ids = torch.randint(0, VOCAB, (2, 40))
    calls = []
    from slimkv.ops.decode import triton as kernels

    real = kernels.ddts_step
    kernels.ddts_step = lambda *a: calls.append(1) or real(*a)
    try:
        got = triton_model.generate(ids, max_new_tokens=4, do_sample=False)
    finally:
        kernels.ddts_step = real
    assert torch.equal(got, torch_model.generate(ids, max_new_tokens=4, do_sample=False))
    assert len(calls) == 3 * 2  # three decode steps x two layers


def test_saved_folder_generates_through_pipeline_with_the_cache(tmp_path, monkeypatch):
    """A saved model + tokenizer folder: plain pipeline("text-generation") steps one token at a time and stops at
    the end-of-text token, with the generation settings the folder carries."""
    from transformers import AutoModelForCausalLM, pipeline

    from slimkv.data import train_tokenizer
    from slimkv.data.tokenizer import load_tokenizer, save_tokenizer

    text = tmp_path / "train.txt"
    text.write_text("It is a truth universally acknowledged, that a single man must be in want of a wife.\n" * 30)
    save_tokenizer(train_tokenizer(text, vocab_size=300, progress=False), tmp_path / "model")
    tokenizer = load_tokenizer(tmp_path / "model")
    model = make_model("rodimus_plus", vocab_size=300, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.eos_token_id)
    model.generation_config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.eos_token_id)
    model.save_pretrained(tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.use_cache and loaded.generation_config.max_new_tokens == 6
    spy = Spy(loaded, monkeypatch)
    generator = pipeline("text-generation", model=loaded, tokenizer=tokenizer)
    out = generator("It is a truth", return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)
    assert spy.forward_tokens == [len(tokenizer("It is a truth").input_ids)] and 1 <= spy.steps <= 5
    # without the fast loop (decode settings it does not implement) the same folder still decodes token by token
    spy.forward_tokens.clear()
    generator("It is a truth", return_full_text=False, repetition_penalty=1.3)
    assert spy.forward_tokens[0] > 1 and set(spy.forward_tokens[1:]) <= {1}


def test_decode_flag_is_checked():
    model = make_model("rodimus")
    ids = torch.randint(1, VOCAB, (1, 7))
    assert torch.equal(model.generate(ids, max_new_tokens=5, decode="eager"), model.generate(ids, max_new_tokens=5))
    assert generation.DECODE_MODES == ("auto", "graph", "eager")
    with pytest.raises(ValueError, match="decode must be one of"):
        model.generate(ids, decode="fast")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        model.generate(ids, decode="graph")


def test_prompt_beyond_the_position_limit_is_one_clear_error():
    model = make_model("rodimus_plus", max_position_embeddings=32)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings=32"):
        model.generate(torch.randint(0, VOCAB, (1, 30)), max_new_tokens=5)
