"""Model-level invariants of Rodimus / Rodimus+: decode == full forward, save/load, generation, cache size, init."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import slimkv
from slimkv import RodimusConfig, RodimusForCausalLM

BLOCKS = ["rodimus", "rodimus_plus"]


def tiny(block_type, **kw) -> RodimusForCausalLM:
    cfg = dict(vocab_size=61, hidden_size=64, num_hidden_layers=2, block_type=block_type, mem_size=16, num_heads=4,
               window_size=8, pad_token_id=0, eos_token_id=None)
    cfg.update(kw)
    torch.manual_seed(0)
    return RodimusForCausalLM(RodimusConfig(**cfg)).eval()


@pytest.mark.parametrize("block_type", BLOCKS)
def test_prefill_chunks_and_steps_equal_full_forward(block_type):
    model = tiny(block_type).double()
    ids = torch.randint(1, 61, (3, 29))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = model.allocate_cache(3)
        # prefill, a second multi-token chunk that continues from the cache, then one token at a time
        parts = [model(ids[:, :11], past_key_values=cache).logits, model(ids[:, 11:20], past_key_values=cache).logits]
        parts += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(20, 29)]
    assert cache.seen_tokens == 29
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("block_type", BLOCKS)
def test_save_and_load_with_auto_classes(tmp_path, block_type):
    model = tiny(block_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).block_type == block_type
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, slimkv.RodimusForCausalLM)
    ids = torch.randint(0, 61, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("block_type", BLOCKS)
def test_greedy_generate_with_cache_equals_recomputing(block_type):
    model = tiny(block_type)
    prompt = torch.randint(1, 61, (1, 7))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=12, do_sample=False)
        seq = prompt
        for _ in range(12):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("block_type", BLOCKS)
def test_left_padded_batch_generates_like_single_prompts(block_type):
    model = tiny(block_type)
    prompts = [torch.randint(1, 61, (n,)) for n in (3, 12, 7)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        for i, p in enumerate(prompts):
            alone = model.generate(p[None], max_new_tokens=10, do_sample=False)
            assert torch.equal(batched[i, width:], alone[0, len(p) :]), i


def test_sampling_is_seeded_and_in_vocab():
    model = tiny("rodimus_plus")
    prompt = torch.randint(1, 61, (2, 5))
    with torch.no_grad():
        a = model.generate(prompt, max_new_tokens=9, do_sample=True, top_k=10, generator=None) if False else None
        torch.manual_seed(7)
        a = model.generate(prompt, max_new_tokens=9, do_sample=True, top_k=10, temperature=0.8)
        torch.manual_seed(7)
        b = model.generate(prompt, max_new_tokens=9, do_sample=True, top_k=10, temperature=0.8)
    assert a.shape == (2, 14) and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 61


def _decode(model, n_tokens, batch=2):
    cache = model.allocate_cache(batch)
    with torch.no_grad():
        model(torch.randint(1, 61, (batch, 4)), past_key_values=cache)
        for _ in range(n_tokens - 4):
            model(torch.randint(1, 61, (batch, 1)), past_key_values=cache)
    return cache.nbytes()


@pytest.mark.parametrize("block_type", BLOCKS)
def test_cache_bytes_do_not_grow_with_tokens(block_type):
    model = tiny(block_type)
    cfg = model.config
    short, long = _decode(model, 20), _decode(model, 120)
    assert short == long
    e, m, B = 2 * cfg.hidden_size, cfg.mem_size, 2
    per_layer = B * (e * (cfg.conv_size - 1) * 4 + m * e * 4)
    if block_type == "rodimus_plus":
        slots = cfg.window_size // 2
        per_layer += B * slots * (1 + cfg.num_heads) * cfg.attn_head_dim * 4 + B * slots
    assert long == cfg.num_hidden_layers * per_layer


def test_position_limit_is_a_clear_error():
    model = tiny("rodimus_plus", max_position_embeddings=16)
    with pytest.raises(ValueError, match="longer than max_position_embeddings=16"):
        model(torch.randint(0, 61, (1, 17)))
    # a cache streams past the limit: attention only sees relative positions inside its window
    cache = model.allocate_cache(1)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 61, (1, 12)), past_key_values=cache)
    assert cache.seen_tokens == 36


def test_official_initialisation():
    torch.manual_seed(0)
    cfg = RodimusConfig(vocab_size=101, hidden_size=256, num_hidden_layers=4, block_type="rodimus_plus",
                        num_heads=2, window_size=8, mem_size=64)
    model = RodimusForCausalLM(cfg)
    mixer = model.model.layers[0].mixer
    bias = mixer.gate_proj.bias.detach()
    dt = torch.nn.functional.softplus(bias[:64])
    temp = torch.sigmoid(bias[64:])
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert temp.min() >= 1 / 16 - 1e-6 and temp.max() <= 0.9 + 1e-6
    assert torch.equal(mixer.D.detach(), torch.ones_like(mixer.D))
    # residual outputs scaled by 1/sqrt(n_res * L) with n_res = 3 for Rodimus+
    std_out = model.model.layers[0].ffn.down_proj.weight.std().item()
    assert abs(std_out - 0.02 / math.sqrt(3 * 4)) < 0.1 * 0.02 / math.sqrt(12)
    assert abs(model.model.layers[0].attn.q_proj.weight.std().item() - 0.02) < 0.002
    # xavier uniform with gain 2^-2.5: bound = gain * sqrt(6 / (fan_in + fan_out))
    w = mixer.qk_proj.weight
    bound = 2**-2.5 * math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.9 * bound
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_no_weight_decay_names():
    model = tiny("rodimus_plus")
    names = model.no_weight_decay_names()
    assert "model.layers.0.mixer.D" in names
    assert "model.layers.0.mixer.gate_proj.bias" in names
    assert "model.layers.1.ffn_norm.weight" in names and "model.norm.weight" in names
    assert "model.layers.0.mixer.out_norm.weight" in names
    assert "model.embed_tokens.weight" not in names  # tied: it is also the (decayed) LM head
    assert "model.layers.0.mixer.fc.weight" not in names
    assert "model.embed_tokens.weight" in tiny("rodimus", tie_word_embeddings=False).no_weight_decay_names()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny("rodimus_plus").double().train()
    ids = torch.randint(0, 61, (2, 17))
    model(ids, labels=ids).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-9, atol=1e-12)
