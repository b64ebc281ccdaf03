"""Official checkpoint layout: parity with an independent float64 reference, bit-exact round trip, bad input."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import slimkv  # noqa: F401  (registers the Auto classes)
from slimkv.cli.main import main
from slimkv.convert.official import read_weights
from tests.convert.official_fixtures import official_config, official_state_dict, write_official
from tests.models.official_math import official_logits

CASES = [("rodimus", True, "bin"), ("rodimus", False, "safetensors"),
         ("rodimus_plus", True, "safetensors"), ("rodimus_plus", False, "bin")]


@pytest.mark.parametrize("block_type,tied,fmt", CASES)
def test_converted_logits_match_official_math(tmp_path, block_type, tied, fmt):
    cfg = official_config(block_type, tied=tied)
    sd = official_state_dict(cfg, seed=1)
    src = write_official(tmp_path / "official", cfg, sd, fmt)
    assert main(["convert", "official", str(src), str(tmp_path / "slim")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "slim", dtype=torch.float32).eval()
    assert type(model).__name__ == "RodimusForCausalLM"
    ids = torch.randint(0, cfg["vocab_size"], (19,), generator=torch.Generator().manual_seed(2))
    ref = official_logits(sd, cfg, ids)
    with torch.no_grad():
        got = model(ids[None]).logits[0].double()
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 1e-4, rel
    # the float64 path agrees far tighter: the maths, not just the rounding, is the same
    with torch.no_grad():
        got64 = model.double()(ids[None]).logits[0]
    assert ((got64 - ref).norm() / ref.norm()).item() < 1e-10


@pytest.mark.parametrize("block_type,tied,fmt", CASES)
def test_round_trip_is_bit_exact(tmp_path, block_type, tied, fmt):
    cfg = official_config(block_type, tied=tied)
    sd = official_state_dict(cfg, seed=3)
    src = write_official(tmp_path / "official", cfg, sd, fmt)
    assert main(["convert", "official", str(src), str(tmp_path / "slim")]) == 0
    assert main(["convert", "to-official", str(tmp_path / "slim"), str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    weights = {k: v for k, v in sd.items() if "." in k}  # the inference buffers are dropped
    assert set(back) == set(weights)
    for k, v in weights.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == cfg


def _expect_error(tmp_path, capsys, src, needle):
    dst = tmp_path / "dst"
    code = main(["convert", "official", str(src), str(dst)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst.tmp")]


def _official(tmp_path, mutate_sd=None, mutate_cfg=None, fmt="bin", block_type="rodimus_plus"):
    cfg = official_config(block_type)
    sd = official_state_dict(cfg)
    if mutate_sd:
        mutate_sd(sd)
    if mutate_cfg:
        mutate_cfg(cfg)
    return write_official(tmp_path / "src", cfg, sd, fmt)


def test_missing_tensor(tmp_path, capsys):
    src = _official(tmp_path, lambda sd: sd.pop("model.layers.1.attn.k_proj.weight"))
    _expect_error(tmp_path, capsys, src, "missing tensor(s): model.layers.1.attn.k_proj.weight")


def test_unexpected_tensor(tmp_path, capsys):
    src = _official(tmp_path, lambda sd: sd.__setitem__("model.layers.0.mixer.bogus.weight", torch.zeros(2)))
    _expect_error(tmp_path, capsys, src, "unexpected tensor(s): model.layers.0.mixer.bogus.weight")


def test_wrong_shape(tmp_path, capsys):
    src = _official(tmp_path, lambda sd: sd.__setitem__("model.norm_f.weight", torch.ones(63)))
    _expect_error(tmp_path, capsys, src, "model.norm_f.weight has shape (63,), expected (64,)")


def test_truncated_weights(tmp_path, capsys):
    src = _official(tmp_path, fmt="safetensors")
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    _expect_error(tmp_path, capsys, src, "cannot read weights file")


def test_truncated_bin(tmp_path, capsys):
    src = _official(tmp_path, fmt="bin")
    path = src / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    _expect_error(tmp_path, capsys, src, "cannot read weights file")


def test_unknown_block_type(tmp_path, capsys):
    src = _official(tmp_path, mutate_cfg=lambda c: c.__setitem__("block_type", "mamba"))
    _expect_error(tmp_path, capsys, src, "unknown block_type 'mamba'")


def test_config_without_required_keys(tmp_path, capsys):
    src = _official(tmp_path, mutate_cfg=lambda c: (c.pop("d_model"), c.pop("n_layer")))
    _expect_error(tmp_path, capsys, src, "lacks required key(s): d_model, n_layer")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/slimkv-pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(official_config()))
    with open(src / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embeddings.weight": _Exploit()}, f)
    if os.path.exists("/tmp/slimkv-pwned"):
        os.remove("/tmp/slimkv-pwned")
    _expect_error(tmp_path, capsys, src, "cannot read weights file")
    assert not os.path.exists("/tmp/slimkv-pwned")


def test_existing_destination_survives_a_failed_conversion(tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("previous good output")
    src = _official(tmp_path, lambda sd: sd.pop("model.norm_f.weight"))
    assert main(["convert", "official", str(src), str(dst)]) == 2
    assert (dst / "keep.txt").read_text() == "previous good output"


def test_read_weights_sharded_index(tmp_path):
    from safetensors.torch import save_file

    a, b = {"x": torch.ones(2)}, {"y": torch.zeros(3)}
    save_file(a, str(tmp_path / "m-1.safetensors"))
    save_file(b, str(tmp_path / "m-2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "m-1.safetensors", "y": "m-2.safetensors"}}))
    sd = read_weights(tmp_path)
    assert torch.equal(sd["x"], a["x"]) and torch.equal(sd["y"], b["y"])
