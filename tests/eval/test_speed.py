"""decode_ms_per_token: what it times (generate(1) and generate(new) per repeat, after an optional warm-up)."""
from __future__ import annotations

import pytest
import torch

from slimkv.eval.speed import decode_ms_per_token

from .conftest import tiny_model


def test_decode_timing_calls_generate_as_documented(monkeypatch):
    model = tiny_model("rodimus", vocab_size=64)
    calls = []
    real = type(model).generate

    def spy(self, ids, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        out = real(self, ids, **kwargs)
        # greedy, no early stop: exactly max_new_tokens new tokens every time
        assert out.shape[1] == ids.shape[1] + kwargs["max_new_tokens"]
        return out

    monkeypatch.setattr(type(model), "generate", spy)
    ids = torch.randint(0, 64, (1, 12))
    result = decode_ms_per_token(model, ids, new=5, repeats=2, warmup=True)
    # the warm-up runs both timed calls once, so neither timed t(1) nor t(new) pays a first-call cost
    assert calls == [1, 5, 1, 5, 1, 5]
    assert len(result["ms_per_token_runs"]) == 2 and result["prefill_s"] > 0
    # the median of two runs is their mean
    assert result["ms_per_token"] == pytest.approx(sum(result["ms_per_token_runs"]) / 2)
    assert result["tokens_per_s"] == pytest.approx(1e3 / result["ms_per_token"])
    calls.clear()
    decode_ms_per_token(model, ids, new=3, repeats=1)
    assert calls == [1, 3]
    with pytest.raises(ValueError, match="new >= 2"):
        decode_ms_per_token(model, ids, new=1, repeats=1)
