"""Bad input for `slimkv recurformer ...`: one line on stderr, exit code 2."""
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from slimkv.cli.main import main

from .conftest import tiny_source


def _fails(argv, capsys, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pattern in err, err


def test_unsupported_architecture(tmp_path, capsys):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    for action in (["profile"], ["convert", "--out", str(tmp_path / "o"), "--ratio", "0.5"]):
        _fails(["recurformer", *action[:1], "--model", str(tmp_path / "gpt2"), *action[1:]], capsys,
               "unsupported architecture 'gpt2'")


@pytest.mark.parametrize("ratio", ["1.0", "-0.2", "7"])
def test_ratio_outside_unit_interval(tmp_path, capsys, ratio):
    tiny_source("llama").save_pretrained(tmp_path / "m")
    _fails(["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
            "--ratio", ratio], capsys, "--ratio must be in [0, 1)")


def test_single_kv_unit_requires_flag(tmp_path, capsys):
    tiny_source("llama", num_kv_heads=1).save_pretrained(tmp_path / "m")
    _fails(["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
            "--ratio", "0.3"], capsys, "--allow-empty-layers")


def test_missing_model_folder(tmp_path, capsys):
    _fails(["recurformer", "profile", "--model", str(tmp_path / "nothing")], capsys, "config.json missing")


def test_calibration_text_shorter_than_window(tmp_path, capsys):
    from slimkv.data.pretrained import fetch_smollm2

    short = tmp_path / "short.txt"
    short.write_text("Too short a text.")
    _fails(["recurformer", "profile", "--model", str(fetch_smollm2()), "--data", str(short), "--window", "32",
            "--quiet"], capsys, "not more than the window k = 32")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _fails(["recurformer", "profile", "--model", str(fetch_smollm2()), "--data", str(empty)], capsys, "is empty")


def test_train_refuses_unconverted_model_without_control(tmp_path, capsys):
    tiny_source("llama").save_pretrained(tmp_path / "m")
    _fails(["recurformer", "train", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")], capsys,
           "no conversion.json")
