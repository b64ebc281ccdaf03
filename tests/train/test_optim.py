import math

import pytest
import torch

from slimkv.train.config import ModelConfig, OptimConfig
from slimkv.train.factory import build_model
from slimkv.train.optim import build_optimizer, lr_factor, no_weight_decay_names


def tiny(arch, tied=True):
    return build_model(ModelConfig(arch=arch, hidden_size=32, num_hidden_layers=2, num_heads=2, mem_size=8,
                                   window_size=16, tie_word_embeddings=tied), vocab_size=40)


@pytest.mark.parametrize("arch", ["rodimus", "rodimus_plus", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_official_no_decay_exclusions(arch, tied):
    model = tiny(arch, tied)
    excluded = no_weight_decay_names(model)
    names = dict(model.named_parameters())
    embedding = next(n for n, p in names.items() if p is model.get_input_embeddings().weight)
    # the embedding is excluded only when untied (a tied one is the LM head's weight, which is decayed)
    assert (embedding in excluded) == (not tied)
    for name, param in names.items():
        if name == embedding:
            continue
        is_vector = param.ndim < 2
        assert (name in excluded) == is_vector, name
    if arch != "llama":
        assert any(n.endswith(".D") or n.endswith("residual_weight") for n in excluded)
    optimizer = build_optimizer(model, OptimConfig())
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_warmup_then_cosine():
    factors = [lr_factor(step, warmup_steps=4, total_steps=14, min_lr_ratio=0.1) for step in range(16)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0)
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[14] == pytest.approx(0.1) and factors[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_scheduler_drives_optimizer_lr():
    from slimkv.train.optim import build_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.0), total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.5])
