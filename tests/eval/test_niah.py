"""Needle in a haystack: exact prompt lengths and depths on real text, exact-match scoring, greedy decoding that
really uses the cache (one token per forward after the prefill) and equals full recomputation, an oracle that
retrieves every needle, and the CLI's JSON + heatmap."""
import json

import pytest
import torch
from torch import nn

from slimkv.eval.niah import (NEEDLE, Haystack, NIAHConfig, _encode, build_prompt, exact_match, greedy_complete,
                              run_niah)

from .conftest import tiny_model


def test_exact_match():
    assert exact_match(" 58213. Remember", "58213")
    assert exact_match("\n58213", "58213")
    assert not exact_match(" 582134", "58213")
    assert not exact_match(" 5821", "58213")
    assert not exact_match(" the key", "58213")
    assert not exact_match(" 1 58213", "58213")


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_prompt_has_the_exact_length_and_the_needle_at_its_depth(brown_tokenizer, brown_documents, depth):
    haystack = Haystack(brown_tokenizer, brown_documents, 3000)
    ids, where = build_prompt(brown_tokenizer, haystack, 2048, depth, "58213")
    assert len(ids) == 2048
    needle = _encode(brown_tokenizer, NEEDLE.format(key="58213"))
    assert ids[where:where + len(needle)] == needle
    head = len(_encode(brown_tokenizer, "There is a pass key hidden inside a lot of irrelevant text. Find it and "
                                        "remember it; you will be asked for it at the end.\n\n"))
    haystack_len = 2048 - head - len(needle) - len(_encode(brown_tokenizer, "\n\nWhat is the pass key? The pass "
                                                                             "key is"))
    offset = where - head
    # moved back to a sentence end, never forward, and never far (Brown sentences are short)
    assert offset <= round(depth * haystack_len) and round(depth * haystack_len) - offset < 120
    if depth == 0.0:
        assert offset == 0
    text = brown_tokenizer.decode(ids[head:where])
    assert offset == 0 or text.rstrip().endswith((".", "!", "?")) or text.endswith("\n")
    # the haystack is the corpus text itself, in order
    assert ids[head:where] == haystack.ids[:offset]


def test_haystack_cycles_short_texts(brown_tokenizer):
    haystack = Haystack(brown_tokenizer, ["One short line."], 50)
    assert len(haystack.ids) == 50
    with pytest.raises(ValueError, match="empty"):
        Haystack(brown_tokenizer, ["  "], 50)


class CountingModel(nn.Module):
    """Wraps a model and records the number of tokens of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.calls: list[int] = []
        self.last_logits: list[torch.Tensor] = []

    def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
        self.calls.append(input_ids.shape[1])
        out = self.inner(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        self.last_logits.append(out.logits[0, -1])
        return out


def greedy_by_recompute(model, ids, steps):
    ids = torch.tensor([ids])
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat((ids, nxt), dim=1)
    return ids[0, -steps:].tolist()


@pytest.mark.parametrize("arch", ["rodimus", "rodimus_plus", "llama"])
@pytest.mark.parametrize("chunk", [0, 7])
def test_greedy_decoding_uses_the_cache_and_equals_recompute(arch, chunk):
    model = tiny_model(arch, vocab_size=50)
    ids = torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    counting = CountingModel(model)
    new = greedy_complete(counting, ids, 6, prefill_chunk=chunk)
    assert new == greedy_by_recompute(model, ids, 6)
    prefill = [30] if chunk == 0 else [7, 7, 7, 7, 2]
    assert counting.calls == prefill + [1] * 5
    # every step's logits equal those of one full forward over prompt + new tokens: the cache carried everything
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids + new[:-1]]), use_cache=False).logits[0, 29:]
    stepped = torch.stack(counting.last_logits[len(prefill) - 1:])
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-5)


def test_greedy_decoding_of_a_recurformer_model():
    from slimkv.recurformer.convert import build_converted

    from tests.recurformer.conftest import tiny_source

    model = build_converted(tiny_source("llama"), [[1], [0]], "mamba2", mixer_kwargs={}).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.self_attn.branch is not None:
                layer.self_attn.branch.out_proj.weight.normal_(0, 0.3)
    ids = torch.randint(0, 97, (20,), generator=torch.Generator().manual_seed(4)).tolist()
    counting = CountingModel(model)
    assert greedy_complete(counting, ids, 5) == greedy_by_recompute(model, ids, 5)
    assert counting.calls == [20, 1, 1, 1, 1]


class InductionOracle(nn.Module):
    """Predicts the token that followed the longest earlier match of the current suffix (a perfect copier)."""

    def __init__(self, vocab_size: int, max_positions: int, wrong: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.wrong = wrong
        self.config = type("Config", (), {"max_position_embeddings": max_positions})()
        self.dummy = nn.Parameter(torch.zeros(1))

    def _next(self, history: list[int]) -> int:
        for width in range(min(12, len(history) - 1), 0, -1):
            suffix = history[-width:]
            for start in range(len(history) - width - 1, -1, -1):
                if history[start:start + width] == suffix:
                    return (history[start + width] + self.wrong) % self.vocab_size
        return 0

    def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
        history = (past_key_values or []) + input_ids[0].tolist()
        logits = torch.zeros(1, input_ids.shape[1], self.vocab_size)
        logits[0, -1, self._next(history)] = 1.0
        return type("Out", (), {"logits": logits, "past_key_values": history})()


def test_an_oracle_retrieves_every_needle_and_a_wrong_one_none(brown_tokenizer, brown_documents):
    config = NIAHConfig(lengths=(256, 512, 4096), depths=(0.0, 0.5, 1.0), trials=2, max_new_tokens=6)
    vocab = brown_tokenizer.vocab_size
    result = run_niah(InductionOracle(vocab, 1024), brown_tokenizer, brown_documents, config)
    assert result.lengths == [256, 512] and result.skipped_lengths == [4096]
    assert result.accuracy == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert len(result.rows) == 12 and len({row.key for row in result.rows}) == 12
    assert all(row.completion.strip().startswith(row.key) for row in result.rows)
    wrong = run_niah(InductionOracle(vocab, 1024, wrong=True), brown_tokenizer, brown_documents, config)
    assert wrong.mean_accuracy == 0.0
    with pytest.raises(ValueError, match="exceeds the model's position limit"):
        run_niah(InductionOracle(vocab, 100), brown_tokenizer, brown_documents, config)


def test_niah_cli_writes_json_and_heatmap(tmp_path, capsys, brown_data, brown_documents):
    from slimkv.cli.main import main

    model = tiny_model("rodimus_plus", vocab_size=brown_data.vocab_size, max_positions=300)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((brown_data.tokenizer_path.parent / name).read_bytes())
    hay = tmp_path / "hay.txt"
    hay.write_text("\n\n\n".join(brown_documents[:3]))
    out = tmp_path / "niah"
    code = main(["eval", "niah", str(folder), "--haystack", str(hay), "--lengths", "128,256,1024",
                 "--depths", "0,50,100", "--max-new-tokens", "3", "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "niah.json").read_text())
    assert report["lengths"] == [128, 256] and report["skipped_lengths"] == [1024]
    assert report["depths"] == [0.0, 0.5, 1.0] and len(report["accuracy"]) == 2
    assert len(report["rows"]) == 6 and report["header"]["git_commit"]
    assert (out / "niah.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean exact match" in capsys.readouterr().out
    assert main(["eval", "niah", str(folder), "--haystack", str(hay), "--depths", "150"]) == 2
    assert "depths" in capsys.readouterr().err
