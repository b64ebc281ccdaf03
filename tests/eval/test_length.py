"""Length extrapolation curves: chunked walking with the cache scores exactly what one long forward scores."""
from __future__ import annotations

import math

import pytest
import torch

import slimkv
from slimkv.eval.length import loss_by_position, token_losses, write_curves


def tiny(block_type: str, **kw):
    torch.manual_seed(0)
    fields = dict(block_type=block_type, vocab_size=53, hidden_size=32, num_hidden_layers=2, mem_size=8,
                  num_heads=2, window_size=8, max_position_embeddings=64)
    cfg = slimkv.RodimusConfig(**{**fields, **kw})
    return slimkv.RodimusForCausalLM(cfg).double().eval()


@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus", "gla"])
def test_chunks_with_the_cache_equal_one_forward(block_type):
    model = tiny(block_type, max_position_embeddings=256)
    ids = torch.randint(0, 53, (2, 150))
    want = torch.nn.functional.cross_entropy(model(ids, use_cache=False).logits[:, :-1].flatten(0, 1),
                                             ids[:, 1:].flatten(), reduction="none").view(2, -1)
    got = token_losses(model, ids, chunk=37)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-9)


def test_curve_goes_past_the_position_limit_and_bins(tmp_path):
    model = tiny("rodimus_plus")  # no single forward may exceed 64 tokens; the curve runs to 300
    ids = torch.randint(0, 53, (1000,))
    curve = loss_by_position(model, ids, length=300, chunk=32, bin_size=50, max_sequences=3, trained_length=64)
    assert curve.sequences == 3 and len(curve.loss) == 6 and curve.positions()[-1] == 250
    assert all(math.isfinite(v) and v > 0 for v in curve.loss)
    json_path, png_path = write_curves({"rodimus_plus": curve}, tmp_path)
    assert json_path.is_file() and png_path.stat().st_size > 1000
    with pytest.raises(ValueError, match="fewer than one sequence"):
        loss_by_position(model, ids[:100], length=300)


def test_length_cli_writes_one_curve_per_model(tmp_path, capsys, brown_data, brown_documents):
    import json

    from slimkv.cli.main import main

    from .conftest import tiny_model

    folders = []
    for arch in ("rodimus", "llama"):
        folder = tmp_path / arch
        tiny_model(arch, vocab_size=brown_data.vocab_size, max_positions=128).save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((brown_data.tokenizer_path.parent / name).read_bytes())
        folders.append(str(folder))
    text = tmp_path / "text.txt"
    text.write_text("\n\n\n".join(brown_documents[:20]))
    out = tmp_path / "length"
    code = main(["eval", "length", *folders, "--text", str(text), "--length", "384", "--chunk", "64",
                 "--bin-size", "64", "--max-sequences", "2", "--trained-length", "128", "--out", str(out), "-q"])
    assert code == 0
    report = json.loads((out / "length.json").read_text())
    assert set(report["curves"]) == {"rodimus", "llama"} and report["header"]["git_commit"]
    for curve in report["curves"].values():
        # 383 scored positions in bins of 64; a random model is near log(vocab) everywhere
        assert curve["sequences"] == 2 and len(curve["loss"]) == 6 and curve["trained_length"] == 128
        assert all(abs(v - math.log(brown_data.vocab_size)) < 1.0 for v in curve["loss"])
    assert (out / "length.png").read_bytes()[:4] == b"\x89PNG"
    assert "rodimus (2 sequences of 384)" in capsys.readouterr().out
    assert main(["eval", "length", "--text", str(text), "--out", str(out)]) == 2
    assert "missing required MODELS" in capsys.readouterr().err
