"""Rotary embedding: the rotate-half fast path against the complex-number spec."""
import math

import pytest
import torch

from slimkv.ops.rope import apply_rope, apply_rope_reference, rope_cos_sin, rope_inv_freq


@pytest.mark.parametrize("rotary_dim", [None, 8])
@pytest.mark.parametrize("base", [10000.0, 500.0])
@pytest.mark.parametrize("T", [1, 5, 129])
def test_apply_rope_matches_complex_reference(T, base, rotary_dim):
    B, H, D = 2, 3, 16
    x = torch.randn(B, T, H, D, dtype=torch.float64)
    # left-padded style positions: each row starts at its own offset
    positions = torch.arange(T).unsqueeze(0) + torch.tensor([[0], [37]])
    cos, sin = rope_cos_sin(positions, rotary_dim or D, base, dtype=torch.float64)
    got = apply_rope(x, cos, sin)
    expected = apply_rope_reference(x, positions, rotary_dim, base)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if rotary_dim is not None:
        assert torch.equal(got[..., rotary_dim:], x[..., rotary_dim:])


def test_rotation_by_hand_at_one_position():
    # D = 4: pairs (0, 2) with theta 1 and (1, 3) with theta base^(-1/2) = 0.01
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 1, 1, 4)
    positions = torch.tensor([[3]])
    cos, sin = rope_cos_sin(positions, 4, 10000.0, dtype=torch.float64)
    got = apply_rope(x, cos, sin).flatten()
    a, b = 3.0, 0.03
    expected = torch.tensor(
        [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
         3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_float32_tables_and_bf16_input():
    positions = torch.arange(300).unsqueeze(0)
    cos, sin = rope_cos_sin(positions, 32)
    assert cos.dtype == torch.float32 and cos.shape == (1, 300, 32)
    x = torch.randn(1, 300, 2, 32)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope_reference(x, positions), rtol=1e-4, atol=1e-4)
    out = apply_rope(x.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope_reference(x, positions), rtol=2e-2, atol=2e-2)


def test_relative_position_property():
    # q_i . k_j after rotation depends on i - j only
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(i, j):
        cq, sq = rope_cos_sin(torch.tensor([[i]]), 8, dtype=torch.float64)
        ck, sk = rope_cos_sin(torch.tensor([[j]]), 8, dtype=torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(10, 4), score(106, 100), rtol=1e-10, atol=1e-10)
    assert not torch.isclose(score(10, 4), score(10, 5))


def test_one_dim_positions_broadcast_over_batch():
    x = torch.randn(3, 6, 2, 8, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(6), 8, dtype=torch.float64)
    assert cos.shape == (6, 8)
    expected = apply_rope_reference(x, torch.arange(6).expand(3, 6))
    torch.testing.assert_close(apply_rope(x, cos, sin), expected, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        rope_cos_sin(torch.arange(4), 7)
    with pytest.raises(ValueError, match="integer"):
        rope_cos_sin(torch.arange(4.0), 8)
    cos, sin = rope_cos_sin(torch.arange(4), 16)
    with pytest.raises(ValueError, match="D >= R"):
        apply_rope(torch.zeros(1, 4, 2, 8), cos, sin)


def test_tables_from_a_given_frequency_table():
    """A pretrained model's own frequencies (e.g. Llama-3's rescaled ones) replace base^(-2j / R)."""
    positions = torch.arange(7).unsqueeze(0)
    inv_freq = rope_inv_freq(8, 500.0) * torch.tensor([1.0, 0.5, 0.25, 0.125])
    cos, sin = rope_cos_sin(positions, 0, inv_freq=inv_freq)
    angles = positions[0, :, None].float() * inv_freq
    torch.testing.assert_close(cos[0], torch.cat([angles, angles], -1).cos())
    torch.testing.assert_close(sin[0], torch.cat([angles, angles], -1).sin())
    same = rope_cos_sin(positions, 8, 500.0)
    torch.testing.assert_close(rope_cos_sin(positions, 0, inv_freq=rope_inv_freq(8, 500.0))[0], same[0])
