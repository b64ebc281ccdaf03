"""Each layer owns its initialisation (reset_parameters); the model only picks the scales. Statistics per block type,
so a changed gain in any of them fails here."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import slimkv
from slimkv.layers.ddts import DDTSMixer
from slimkv.layers.gla import GLAMixer
from slimkv.layers.mamba2 import Mamba2Mixer

L, STD = 4, 0.02


def build(block_type: str):
    torch.manual_seed(0)
    cfg = slimkv.RodimusConfig(vocab_size=101, hidden_size=256, num_hidden_layers=L, block_type=block_type,
                               num_heads=2, window_size=8, mem_size=64)
    return slimkv.RodimusForCausalLM(cfg)


def close(value: float, want: float, rel: float = 0.1) -> bool:
    return abs(value - want) < rel * want


@pytest.mark.parametrize("block_type,branches", [("rodimus", 1), ("rodimus_plus", 3), ("mamba2", 1), ("gla", 2)])
def test_residual_outputs_are_scaled_by_the_branch_count(block_type, branches):
    model = build(block_type)
    want = STD / math.sqrt(branches * L)
    layer = model.model.layers[1]
    outs = [layer.mixer.out_proj]
    if layer.attn is not None:
        outs.append(layer.attn.o_proj)
    if layer.ffn is not None:
        outs.append(layer.ffn.down_proj)
    for lin in outs:
        assert close(lin.weight.std().item(), want), (block_type, lin.weight.std().item(), want)
    assert close(model.model.embed_tokens.weight.std().item(), STD)
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in (layer.mixer_norm, model.model.norm))


def test_ddts_official_init_in_the_layer():
    mixer = DDTSMixer(256, mem_size=64)
    for p in mixer.parameters():
        nn.init.constant_(p, 7.0)  # garbage, so every value below comes from reset_parameters
    mixer.reset_parameters(std=STD, residual_std=0.001)
    bias = mixer.gate_proj.bias
    dt, temp = torch.nn.functional.softplus(bias[:64]), torch.sigmoid(bias[64:])
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001 and temp.min() >= 1 / 16 - 1e-6
    for lin in (mixer.qk_proj, mixer.gate_proj, mixer.channel_gate[0], mixer.channel_gate[1]):
        bound = 2**-2.5 * math.sqrt(6 / sum(lin.weight.shape))
        assert 0.9 * bound < lin.weight.abs().max().item() <= bound
    assert close(mixer.out_proj.weight.std().item(), 0.001) and close(mixer.fc.weight.std().item(), STD)
    assert torch.equal(mixer.D, torch.ones_like(mixer.D)) and (mixer.channel_gate[1].bias == 0).all()


def test_mamba2_and_gla_layers_own_their_init():
    mamba = Mamba2Mixer(128, num_heads=4, head_dim=32, state_size=16, use_gate=True)
    gla = GLAMixer(128, num_heads=2, key_dim=16)
    for layer in (mamba, gla):
        for p in layer.parameters():
            nn.init.constant_(p, 7.0)
        layer.reset_parameters(std=STD, residual_std=0.003)
        assert close(layer.out_proj.weight.std().item(), 0.003, rel=0.15)
    A = torch.exp(mamba.A_log)
    dt = torch.nn.functional.softplus(mamba.dt_bias)
    assert A.min() >= 1 and A.max() <= 16 and dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = 2**-2.5 * math.sqrt(6 / sum(gla.q_proj.weight.shape))
    assert gla.q_proj.weight.abs().max().item() <= bound and (gla.decay_proj[1].bias == 0).all()


def test_loading_a_checkpoint_does_not_reinitialise_it(tmp_path):
    model = build("mamba2")
    with torch.no_grad():
        model.model.layers[0].mixer.A_log.fill_(0.5)
        model.model.layers[0].mixer.out_proj.weight.fill_(0.25)
    model.save_pretrained(tmp_path)
    again = slimkv.RodimusForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.model.layers[0].mixer.A_log, model.model.layers[0].mixer.A_log)
    assert (again.model.layers[0].mixer.out_proj.weight == 0.25).all()
