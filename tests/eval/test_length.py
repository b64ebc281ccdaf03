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
