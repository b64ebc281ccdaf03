"""Recency ratio: band + row-LSE form vs the dense spec, and vs HF's own eager attention weights."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkv.recurformer.profile import (RecencyProfile, calibration_batches, profile_model, recency_ratio_reference,
                                        recency_ratio_sums)

from .conftest import tiny_source


@settings(max_examples=10, deadline=None)
@given(T=st.integers(2, 40), batch=st.integers(1, 2), kv=st.sampled_from([1, 2]), chunk=st.sampled_from([3, 16, 64]),
       sliding=st.sampled_from([None, 4]))
def test_band_lse_matches_dense_spec(T, batch, kv, chunk, sliding):
    g = torch.Generator().manual_seed(T)
    q, k = torch.randn(batch, T, 4, 8, generator=g) * 2, torch.randn(batch, T, kv, 8, generator=g) * 2
    windows = [1, 3, 8, 50]
    ref, ref_counts = recency_ratio_reference(q, k, windows, 0.3, sliding)
    got, counts = recency_ratio_sums(q, k, windows, 0.3, sliding, query_chunk=chunk)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, ref_counts)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_profile_matches_hf_eager_attention_weights(family):
    source = tiny_source(family, attn_implementation="eager")
    ids = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(0))
    profile = profile_model(source, ids, windows=[2, 5], window=5, batch_size=2, progress=False)
    with torch.no_grad():
        attentions = source(ids, output_attentions=True).attentions  # per layer [B, H, T, T]
    idx = torch.arange(24)
    for w in (2, 5):
        band = (idx[:, None] - idx[None, :] <= w) & (idx[None, :] <= idx[:, None])
        for layer, probs in enumerate(attentions):
            expected = (probs * band).sum(-1)[:, :, w:].mean(dim=(0, 2))
            torch.testing.assert_close(torch.tensor(profile.head_rr[w][layer]), expected, rtol=1e-4, atol=1e-5)
            units = expected.view(2, 2).mean(-1)
            torch.testing.assert_close(torch.tensor(profile.unit_rr[w][layer]), units, rtol=1e-4, atol=1e-5)
    again = RecencyProfile.from_json(profile.to_json())
    assert again.unit_rr == profile.unit_rr


class _WordTokenizer:
    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        class Out:
            input_ids = torch.tensor([[len(w) for w in text.split()]])
        return Out()


def test_calibration_text_shorter_than_the_window_is_refused():
    with pytest.raises(ValueError, match="not more than the window k = 32"):
        calibration_batches(_WordTokenizer(), "a few words only", 4, 128, 32)
    rows = calibration_batches(_WordTokenizer(), " ".join(["word"] * 1000), 4, 100, 32)
    assert rows.shape == (4, 100)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_missing_device_is_refused_before_any_fetch(tmp_path, monkeypatch):
    from slimkv.errors import UserError
    from slimkv.recurformer.profile import ProfileConfig, profile

    monkeypatch.chdir(tmp_path)  # the default data dir would be ./data
    with pytest.raises(UserError, match="--device is 'cuda' but no CUDA device is available"):
        profile(ProfileConfig(model=str(tmp_path / "no-model"), device="cuda"), progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing written
