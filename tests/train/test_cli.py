"""`slimkv train` / `slimkv eval` end to end on tiny models, and bad input: one line on stderr, exit 2, and
earlier checkpoints untouched."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from slimkv.cli.main import main
from slimkv.train.data_sources import DataSources
from slimkv.train.trainer import Trainer

from .helpers import tiny_config, tiny_config_dict

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 12


def write_config(tmp_path, name="run", **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", name, **sections)))
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_train_on_packed_text_then_eval_run_dir_and_export(tmp_path, capsys, tokenizer_file):
    from slimkv.data import PackedDataset, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_file)
    ids = np.asarray(tokenizer.backend_tokenizer.encode(TEXT).ids, dtype=np.int64)
    vocab = tokenizer.backend_tokenizer.get_vocab_size()
    sources = DataSources(train=PackedDataset(ids, 32, seed=0, vocab_size=vocab),
                          heldout=PackedDataset(ids[:200], 32, shuffle=False, vocab_size=vocab),
                          vocab_size=vocab, tokenizer_file=tokenizer_file)
    cfg = tiny_config(tmp_path / "runs", "text", "rodimus", train={"steps": 3, "export_model": True})
    Trainer(cfg, sources=sources).fit()
    run_dir = tmp_path / "runs" / "text"
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT[:600])
    results = {}
    for name, target in (("export", run_dir / "model"), ("run", run_dir)):
        out = tmp_path / f"{name}.json"
        code, stdout, _ = run_cli(capsys, "eval", target, "--ppl", text_file, "--seq-len", "16", "--json", out,
                                  "--quiet")
        assert code == 0 and "bits/byte" in stdout
        results[name] = json.loads(out.read_text())
    assert results["export"]["bytes"] == 600 and results["export"]["mode"] == "recurrent"
    assert results["export"]["nll_nats"] == pytest.approx(results["run"]["nll_nats"], rel=1e-6)
    # the checkpoint-only path: drop the export, evaluate from checkpoints/ + tokenizer/
    import shutil

    shutil.rmtree(run_dir / "model")
    code, stdout, _ = run_cli(capsys, "eval", run_dir, "--ppl", text_file, "--seq-len", "16", "--quiet")
    assert code == 0 and f"{results['export']['token_ppl']:.3f}" in stdout


def test_eval_bad_input(tmp_path, capsys, tokenizer_file):
    from slimkv.train.factory import build_model

    model = build_model(tiny_config(tmp_path).model, vocab_size=300)
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    good = tmp_path / "good.txt"
    good.write_text(TEXT[:300])
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    cases = [
        (("--ppl", good, "--seq-len", "128"), "exceeds the model's position limit max_position_embeddings=64"),
        (("--ppl", empty), "is empty"),
        (("--ppl", latin), "is not UTF-8 text (invalid byte at offset 3)"),
        (("--ppl", tmp_path / "missing.txt"), "is neither a file nor a corpus split"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "eval", folder, "--seq-len", "16", *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, "eval", tmp_path / "nowhere", "--ppl", good)
    assert code == 2 and "does not exist" in err
    code, out, _ = run_cli(capsys, "eval", folder, "--ppl", good, "--seq-len", "16", "--stride", "4", "--quiet")
    assert code == 0 and "sliding" in out


def test_train_bad_config_fields(tmp_path, capsys):
    config = write_config(tmp_path)
    cases = [
        (("--optim.learning_rate=1",), "unknown config field 'optim.learning_rate'"),
        (("--train.steps=many",), "config field 'train.steps' must be an integer"),
        (("--data.seq_len=128",), "'data.seq_len' (128) exceeds the model's position limit"),
        (("stray",), "unrecognised argument 'stray'"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "train", config, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
    broken = tmp_path / "broken.yaml"
    data = tiny_config_dict(tmp_path / "runs", "broken")
    data["model"]["colour"] = "red"
    broken.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capsys, "train", broken)
    assert code == 2 and "unknown config field 'model.colour'" in err
    data["model"].pop("colour")
    data["model"]["num_hidden_layers"] = 0
    broken.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capsys, "train", broken)
    assert code == 2 and "'model.layers_by_arch' has no 'llama'" in err
    assert not (tmp_path / "runs").exists()


def test_resume_from_corrupt_or_mismatched_checkpoint(tmp_path, capsys):
    config = write_config(tmp_path, "victim", train={"steps": 2, "checkpoint_every": 1, "keep_checkpoints": 3})
    code, _, _ = run_cli(capsys, "train", config)
    assert code == 0
    checkpoints = tmp_path / "runs" / "victim" / "checkpoints"
    before = {name: digest(checkpoints / name) for name in ("step-000001", "step-000002")}

    code, _, err = run_cli(capsys, "train", config, "--train.steps=4", "--model.hidden_size=48", "--resume")
    assert code == 2 and "does not match the config: model.hidden_size is 32 there and 48 here" in err
    assert err.count("\n") == 1

    state = checkpoints / "step-000002" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before["step-000002"] = digest(checkpoints / "step-000002")
    code, _, err = run_cli(capsys, "train", config, "--train.steps=4", "--resume", "--allow-config-change")
    assert code == 2 and "is corrupt or truncated" in err and err.count("\n") == 1
    after = {name: digest(checkpoints / name) for name in ("step-000001", "step-000002")}
    assert after == before
    # the earlier good checkpoint still resumes
    code, out, _ = run_cli(capsys, "train", config, "--train.steps=4", "--resume", checkpoints / "step-000001",
                           "--allow-config-change")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["steps"] == 4


def test_sigterm_to_a_running_cli_saves_and_exits_nonzero(tmp_path):
    config = write_config(tmp_path, "long", train={"steps": 100000, "checkpoint_every": 0})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slimkv.cli.main", "train", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "long" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err and "continue with --resume" in err
    pointer = (tmp_path / "runs" / "long" / "checkpoints" / "latest").read_text().strip()
    assert pointer.startswith("step-")


def test_resume_on_different_data_is_refused(tmp_path, capsys):
    config = write_config(tmp_path, "data", train={"steps": 2})
    assert run_cli(capsys, "train", config)[0] == 0
    code, _, err = run_cli(capsys, "train", config, "--train.steps=4", "--data.synthetic_tokens=9000", "--resume")
    assert code == 2 and "resuming needs the same data" in err


def test_count_params_of_every_preset_arch(capsys):
    root = Path(__file__).resolve().parents[2]
    code, out, _ = run_cli(capsys, "train", root / "configs" / "130m.yaml", "--count-params")
    counts = json.loads(out)
    assert code == 0 and set(counts) == {"rodimus", "rodimus_plus", "llama", "mamba2", "gla"}
    assert counts["rodimus"]["layers"] == 24 and counts["rodimus_plus"]["layers"] == 12
    assert counts["mamba2"]["layers"] == 26 and counts["gla"]["layers"] == 20
    # the presets keep all five within 5% of each other (non-embedding)
    sizes = [c["non_embedding"] for c in counts.values()]
    assert max(sizes) / min(sizes) < 1.05
