"""`slimkv generate` and `slimkv demo` end to end on a tiny saved model with a real trained tokenizer."""
from __future__ import annotations

import codecs
import json
import this

import pytest
import torch

from slimkv import RodimusConfig, RodimusForCausalLM
from slimkv.cli.main import main
from slimkv.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    text = folder / "zen.txt"
    # the Zen of Python ships with every interpreter: real English text, offline
    text.write_text(codecs.decode(this.s, "rot13") * 4)
    tok = train_tokenizer(text, vocab_size=300, save_dir=folder)
    vocab = tok.get_vocab_size() if hasattr(tok, "get_vocab_size") else len(tok)
    torch.manual_seed(0)
    model = RodimusForCausalLM(RodimusConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2,
                                             block_type="rodimus_plus", num_heads=2, window_size=16,
                                             mem_size=16, max_position_embeddings=64))
    model.save_pretrained(folder)
    return folder


def test_generate_greedy_writes_json(saved_model, tmp_path):
    out = tmp_path / "gen.json"
    args = ["generate", str(saved_model), "--prompt", "Beautiful is better than", "--greedy",
            "--max-new-tokens", "12", "--json", str(out)]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert first["new_tokens"] == 12 and first["cache_bytes"] > 0
    assert main(args) == 0
    assert json.loads(out.read_text())["completion"] == first["completion"]  # greedy is deterministic


def test_generate_rejects_prompt_beyond_position_limit(saved_model, capsys):
    code = main(["generate", str(saved_model), "--prompt", "Errors should never pass silently. " * 20])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "max_position_embeddings=64" in err[0]


def test_generate_missing_model(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a saved model folder" in capsys.readouterr().err


def test_demo_reports_constant_cache(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--hidden-size", "64", "--layers", "2", "--new-tokens", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    before, after = text.split("cache bytes before generating: ")[1].split("\n")[0].split("; after ")
    assert before.replace(",", "") == after.split(": ")[1].replace(",", "")
    rows = json.loads(out.read_text())["memory"]
    assert rows[-1]["transformer_kv_bytes"] > 100 * rows[-1]["state_bytes"]


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
