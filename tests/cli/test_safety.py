"""Nothing is ever lost (issue 11), through the real CLI: outputs never replace what they did not write, and every
environment failure is one line with exit status 2. Each case checks the exit code, the one line on stderr, and
that everything that existed before is byte-for-byte unchanged."""
from __future__ import annotations

import codecs
import json
import this
from pathlib import Path

import pytest
import torch
import yaml

from slimkv import RodimusConfig, RodimusForCausalLM
from slimkv.cli.main import main
from slimkv.io import MANIFEST
from tests.convert.official_fixtures import official_config, official_state_dict, write_official
from tests.fs_fixtures import readonly_folder, tree_digest
from tests.train.helpers import tiny_config_dict


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    cfg = official_config("rodimus_plus")
    return write_official(tmp_path_factory.mktemp("official") / "src", cfg, official_state_dict(cfg), "safetensors")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from slimkv.data.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("model")
    text = folder / "zen.txt"
    text.write_text(codecs.decode(this.s, "rot13") * 4)
    train_tokenizer(text, vocab_size=300, save_dir=folder)
    torch.manual_seed(0)
    RodimusForCausalLM(RodimusConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, mem_size=8,
                                     max_position_embeddings=64)).save_pretrained(folder)
    return folder


def foreign_folder(path: Path) -> Path:
    """A folder holding the user's own things: what the old convert deleted."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return path


# ---------------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("direction", ["official", "to-official"])
def test_convert_refuses_a_folder_it_did_not_write_then_overwrites_only_when_asked(tmp_path, capsys, official,
                                                                                 direction):
    src = official
    if direction == "to-official":
        src = tmp_path / "slim"
        assert main(["convert", "official", str(official), str(src)]) == 0
    dst = foreign_folder(tmp_path / "dst")
    before = tree_digest(dst)
    code, err = run(capsys, "convert", direction, src, dst)
    assert code == 2 and "is not an earlier output of `slimkv convert" in one_line(err)
    assert "(it holds notes.txt, sub/)" in err and "--overwrite" in err
    assert tree_digest(dst) == before
    # an earlier output of the same command is replaced without asking; a foreign one with --overwrite
    assert run(capsys, "convert", direction, src, dst, "--overwrite")[0] == 0
    assert not (dst / "notes.txt").exists() and (dst / "model.safetensors").is_file() and (dst / MANIFEST).is_file()
    first = tree_digest(dst)
    assert run(capsys, "convert", direction, src, dst)[0] == 0
    assert tree_digest(dst) == first
    assert sorted(p.name for p in dst.parent.iterdir() if p.name.startswith(".")) == []


def test_convert_into_the_working_folder_or_the_source_is_refused(tmp_path, capsys, official, monkeypatch):
    work = foreign_folder(tmp_path / "d")
    monkeypatch.chdir(work)
    before, source_before = tree_digest(work), tree_digest(official)
    for dst, needle in ((".", "it is the working folder"), ("..", "it is a parent of the working folder"),
                        (official, "it is the source itself"), (official.parent, "a folder holding the source")):
        for extra in ((), ("--overwrite",)):
            code, err = run(capsys, "convert", "official", official, dst, *extra)
            assert code == 2 and needle in one_line(err), err
    assert tree_digest(work) == before and tree_digest(official) == source_before


def test_recurformer_convert_refuses_a_foreign_out_before_any_work(tmp_path, capsys):
    from tests.recurformer.conftest import tiny_source

    tiny_source("llama").save_pretrained(tmp_path / "m")
    out = foreign_folder(tmp_path / "out")
    before = tree_digest(out)
    # no tokenizer and no calibration text exist: the refusal must come before either is looked for
    code, err = run(capsys, "recurformer", "convert", "--model", tmp_path / "m", "--out", out, "--ratio", "0.5")
    assert code == 2 and "not an earlier output of `slimkv recurformer convert`" in one_line(err)
    assert tree_digest(out) == before
    code, err = run(capsys, "recurformer", "convert", "--model", tmp_path / "m", "--out", tmp_path / "m",
                    "--ratio", "0.5", "--overwrite")
    assert code == 2 and "it is the source itself" in one_line(err)


def test_recurformer_outputs_replace_earlier_outputs_only(tmp_path):
    from slimkv.errors import UserError
    from slimkv.recurformer.convert import build_converted, save_converted
    from tests.recurformer.conftest import tiny_source

    converted = build_converted(tiny_source("llama"), [[1], [0]], "mamba2")
    out = tmp_path / "out"
    save_converted(converted, None, out, {"mixer": "mamba2"})
    save_converted(converted, None, out, {"mixer": "mamba2", "again": True})
    assert json.loads((out / "conversion.json").read_text())["again"] is True
    # `recurformer train` writes a different command's output: it may not replace a conversion silently
    with pytest.raises(UserError, match="not an earlier output of `slimkv recurformer train`"):
        save_converted(converted, None, out, None, command="recurformer train", extra_json={"train.json": {}})
    save_converted(converted, None, out, None, command="recurformer train", extra_json={"train.json": {}},
                   overwrite=True)
    assert (out / "train.json").is_file() and not (out / "conversion.json").exists()


def test_fetch_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    models = tmp_path / "data" / "models"
    foreign = foreign_folder(models / "smollm2-135m-instruct")
    before = tree_digest(foreign)
    # refused before any download is attempted
    code, err = run(capsys, "fetch", "smollm2", "--dest", tmp_path / "data")
    assert code == 2 and "not an earlier output of `slimkv fetch smollm2-135m-instruct`" in one_line(err)
    assert err.rstrip().endswith("(it holds notes.txt, sub/); move it away (or choose another --dest) and fetch again")
    assert tree_digest(foreign) == before and not (tmp_path / "data" / "downloads").exists()



def test_fetch_without_the_gguf_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    code, err = run(capsys, "fetch", "smollm2", "--dest", tmp_path / "data")
    assert code == 2 and "needs the gguf package: pip install 'slimkv[gguf]'" in one_line(err)
    # nothing assembled or half-written
    assert not (tmp_path / "data" / "downloads").exists()
    assert not (tmp_path / "data" / "models" / "smollm2-135m-instruct").exists()

# ---------------------------------------------------------------------------------------------------- read-only
def _read_only_line(err: str) -> bool:
    return "is on a read-only file system" in err or "permission denied" in err


def test_read_only_outputs_are_one_line(tmp_path, capsys, official, saved_model):
    text = tmp_path / "text.txt"
    text.write_text(codecs.decode(this.s, "rot13"))
    config = tmp_path / "run.yaml"

    def populate(folder):
        (folder / "keep.txt").write_text("kept")

    with readonly_folder(tmp_path / "ro", populate) as ro:
        before = tree_digest(ro)
        config.write_text(yaml.safe_dump(tiny_config_dict(ro / "runs", "run")))
        cases = [
            ("train", config),
            ("eval", saved_model, "--ppl", text, "--seq-len", "16", "--quiet", "--json", ro / "ppl.json"),
            ("convert", "official", official, ro / "slim"),
            ("fetch", "smollm2", "--dest", ro / "data"),
        ]
        for argv in cases:
            code, err = run(capsys, *argv)
            assert code == 2 and _read_only_line(one_line(err)), (argv, err)
            assert str(ro) in err
        assert tree_digest(ro) == before


# ---------------------------------------------------------------------------------------------------- inputs
def test_truncated_safetensors_given_to_generate_or_eval_is_one_line(tmp_path, capsys, saved_model):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = tree_digest(broken)
    text = tmp_path / "text.txt"
    text.write_text("Beautiful is better than ugly. " * 8)
    for argv in (("generate", broken, "--prompt", "Beautiful is"),
                 ("eval", broken, "--ppl", text, "--seq-len", "16", "--quiet")):
        code, err = run(capsys, *argv)
        assert code == 2 and "truncated or corrupt" in one_line(err), err
    assert tree_digest(broken) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(capsys, saved_model, tmp_path):
    code, err = run(capsys, "generate", saved_model, "--prompt", "Beautiful is", "--device", "cuda")
    assert code == 2 and "--device is 'cuda' but no CUDA device is available" in one_line(err)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", "run")))
    code, err = run(capsys, "train", config, "--train.device=cuda")
    assert code == 2 and "config field 'train.device' is 'cuda' but no CUDA device" in one_line(err)
    assert not (tmp_path / "runs").exists()
