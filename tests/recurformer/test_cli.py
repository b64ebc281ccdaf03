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

    model = fetch_smollm2()
    capsys.readouterr()  # a first fetch prints download progress; only the command's own error line is checked
    short = tmp_path / "short.txt"
    short.write_text("Too short a text.")
    _fails(["recurformer", "profile", "--model", str(model), "--data", str(short), "--window", "32",
            "--quiet"], capsys, "not more than the window k = 32")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _fails(["recurformer", "profile", "--model", str(model), "--data", str(empty)], capsys, "is empty")


def test_train_refuses_bad_configs_in_one_line(tmp_path, capsys):
    tiny_source("llama").save_pretrained(tmp_path / "m")
    _fails(["recurformer", "train", "smollm2-cpu", f"--recurformer.student={tmp_path / 'm'}"], capsys,
           "no conversion.json")
    _fails(["recurformer", "train", "smollm2-cpu"], capsys, "'recurformer.student' is required")
    _fails(["recurformer", "train", "smollm2-cpu", "--recurformer.stagee=A"], capsys,
           "did you mean 'recurformer.stage'")
    _fails(["recurformer", "train", str(tmp_path / "none.yaml")], capsys, "does not exist")
    _fails(["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--ratio", "0.5",
            "--select", "learned"], capsys, "pass --gates")


def test_profile_writes_table_json_and_png(tmp_path, capsys):
    import json

    from transformers import AutoTokenizer

    from slimkv.data.pretrained import fetch_smollm2

    folder = tmp_path / "tiny"
    tokenizer = AutoTokenizer.from_pretrained(fetch_smollm2())
    tiny_source("qwen2", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 30)
    code = main(["recurformer", "profile", "--model", str(folder), "--data", str(text), "--window", "8",
                 "--windows", "4,8", "--num-sequences", "3", "--seq-len", "48", "--json", str(tmp_path / "p.json"),
                 "--png", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert code == 0 and "layer   1" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["windows"] == [4, 8] and data["num_sequences"] == 3 and data["seq_len"] == 48
    assert len(data["unit_rr"]["8"]) == 2 and len(data["head_rr"]["8"][0]) == 4
    assert all(0.0 < x <= 1.0 for row in data["unit_rr"]["4"] for x in row)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
