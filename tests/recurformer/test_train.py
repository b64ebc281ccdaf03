"""RecurFormer's stages on tiny models: what each objective computes, which parameters move, and whole runs on the
project trainer (export, resume exactness)."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slimkv.config import config_from_dict
from slimkv.data.pretrained import fetch_smollm2
from slimkv.recurformer.config import RecurFormerRunConfig, validate
from slimkv.recurformer.convert import build_converted, save_converted
from slimkv.recurformer.train import (BranchAlignment, Distillation, RecurFormerRecipe, UnitGates,
                                      train_recurformer)
from slimkv.train.batches import PackedTokenSource
from slimkv.train.config import OptimConfig
from slimkv.train.data_sources import DataSources
from slimkv.train.trainer import Trainer, TrainingInterrupted

from .conftest import tiny_source


def _batch(seed=0, batch=2, length=24):
    ids = torch.randint(0, 97, (batch, length + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def _fit(module, steps, lr, seed_cycle=3):
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        inputs, targets = _batch(step % seed_cycle)
        loss = module(input_ids=inputs, targets=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_stage_a_trains_only_the_branches_towards_the_teachers_heads():
    teacher = tiny_source("qwen2")
    student = build_converted(teacher, [[1], [0]], "mamba2", init="zero")
    frozen = {n: p.clone() for n, p in student.named_parameters() if ".branch." not in n}
    stage = BranchAlignment(student, teacher)
    assert [block.layer_idx for block in stage.model.layers] == [0, 1]
    losses = _fit(stage, 15, 1e-2)
    # zero output at step 0: relative MSE exactly 1; it falls well below
    assert losses[0] == pytest.approx(1.0, abs=1e-6) and sum(losses[-3:]) / 3 < 0.8
    for name, p in student.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    # the teacher is no submodule: not trained, not checkpointed
    assert not any(".teacher" in n or n.startswith("teacher") for n, _ in stage.named_parameters())
    with pytest.raises(ValueError, match="no new weights"):
        BranchAlignment(build_converted(teacher, [[1], [0]], "window"), teacher)


def test_stage_a_of_window_mamba2_trains_the_recurrent_part_around_the_frozen_window():
    """The hybrid branch: its window keeps the heads' rows, so Stage A moves only the Mamba2 part, and its loss
    starts at the window's own error (the Mamba2 part outputs zero), which the RoPE passed to the block makes exact."""
    teacher = tiny_source("llama")
    options = {"window": 4, "sinks": 2}
    # layer 0 only: the window variant's layer sees the teacher's own input there
    student = build_converted(teacher, [[1], []], "window_mamba2", mixer_kwargs=options)
    window = build_converted(teacher, [[1], []], "window", mixer_kwargs=options)
    before = {n: p.clone() for n, p in student.named_parameters()}
    stage = BranchAlignment(student, teacher)
    trainable = {n for n, p in stage.named_parameters() if p.requires_grad}
    assert trainable and all(".recurrent." in n for n in trainable)
    inputs, targets = _batch(0)
    with torch.no_grad():
        start = stage(input_ids=inputs, targets=targets).loss
    heads = []
    hooks = [model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: heads.append(a[0]))
             for model in (window, teacher)]
    with torch.no_grad():
        window(inputs), teacher(inputs)
    for hook in hooks:
        hook.remove()
    replaced = window.model.layers[0].self_attn.replaced_heads
    got, want = (x.unflatten(-1, (4, -1))[:, :, replaced] for x in heads)
    window_error = ((got - want).pow(2).mean() / want.pow(2).mean()).item()
    assert 0.01 < start.item() and start.item() == pytest.approx(window_error, rel=1e-4)
    losses = _fit(stage, 15, 1e-2)
    # the Mamba2 part learns part of what the window misses (a random tiny teacher: 0.25 -> 0.23 in 15 steps)
    assert sum(losses[-3:]) / 3 < 0.95 * start.item()
    moved = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".branch.recurrent." in n for n in moved)


def test_errors_by_position_average_to_the_stage_a_loss():
    teacher = tiny_source("qwen2")
    student = build_converted(teacher, [[1], [0]], "mamba2", init="zero")
    with torch.no_grad():
        for layer in student.model.layers:
            layer.self_attn.branch.out_proj.weight.normal_(0, 0.3)
    stage = BranchAlignment(student, teacher)
    inputs, targets = _batch(0, batch=2, length=24)
    errors = stage.errors_by_position(inputs)
    assert errors.shape == (2, 24) and (errors > 0).all()
    with torch.no_grad():
        loss = stage(input_ids=inputs, targets=targets).loss
    torch.testing.assert_close(errors.mean(), loss, rtol=1e-5, atol=0)
    # zero output: every position's error is its target's square relative to the mean square, averaging to 1
    zero = BranchAlignment(build_converted(teacher, [[1], [0]], "mamba2", init="zero"), teacher)
    torch.testing.assert_close(zero.errors_by_position(inputs).mean(1), torch.ones(2), rtol=1e-5, atol=0)


def test_stage_b_is_cross_entropy_plus_kl_to_the_teacher():
    teacher = tiny_source("llama")
    inputs, targets = _batch()
    same = Distillation(build_converted(teacher, [[], []], "mamba2"), teacher, kl_weight=1.0, chunk=7).train()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(teacher(inputs).logits.flatten(0, 1), targets.flatten())
        # a student equal to its teacher: KL 0, the loss is the cross-entropy
        torch.testing.assert_close(same(inputs, targets).loss, ce, rtol=1e-5, atol=1e-5)
    student = build_converted(teacher, [[1], [0]], "ddts")
    stage = Distillation(student, teacher, kl_weight=2.0, chunk=7).train()
    with torch.no_grad():
        trained, plain = stage(inputs, targets).loss, stage.eval()(inputs, targets).loss
    # eval: the next-token loss alone (held-out perplexity); train adds 2 x KL > 0
    assert trained > plain + 1e-3
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(
        student(inputs).logits.flatten(0, 1), targets.flatten()), rtol=1e-5, atol=1e-5)


def test_gates_start_at_full_attention_and_learn_to_stream():
    source = tiny_source("llama")
    inputs, _ = _batch()
    with torch.no_grad():
        before = source(inputs).logits
    gates = UnitGates(source, window=2, sinks=1, sparsity=0.5)
    first = gates(inputs).loss
    # alpha = 1: the gated model is the model, the loss is the sparsity term alone
    torch.testing.assert_close(first, torch.tensor(0.5), rtol=0, atol=1e-6)
    _fit(gates, 20, 5e-2)
    assert gates.gates.detach().max() < 1.0 and [n for n, p in gates.named_parameters() if p.requires_grad] == [
        "gates"]
    with torch.no_grad():
        # outside the gated pass the hooks change nothing
        torch.testing.assert_close(source(inputs).logits, before, rtol=0, atol=0)


def test_gates_backward_with_activation_checkpointing_recomputes_the_gated_pass():
    # the GPU presets checkpoint every block: backward re-runs the gated forward, so the gating must still be on
    # then (2026-12-04, H200: "a different number of tensors was saved during the original forward and
    # recomputation", 57 vs 31, when the flag was reset as the forward returned)
    from slimkv.train.parallelize import apply_activation_checkpointing, find_blocks

    inputs, _ = _batch()
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        gates = UnitGates(tiny_source("llama"), window=2, sinks=1, sparsity=0.5)
        with torch.no_grad():
            gates.gates.copy_(torch.linspace(0.2, 0.9, gates.gates.numel()).view_as(gates.gates))
        if checkpointed:
            assert len(find_blocks(gates)) == gates.config.num_hidden_layers
            apply_activation_checkpointing(gates)
        gates(inputs).loss.backward()
        grads.append(gates.gates.grad.clone())
        assert not gates._gating  # off again once backward has ended: the source model is itself outside
    assert grads[0].abs().max() > 1e-4  # the distillation term moves the gates, not only the penalty
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def _folders(tmp_path, mixer="mamba2"):
    tokenizer = AutoTokenizer.from_pretrained(fetch_smollm2())
    source = tiny_source("llama")
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    model = build_converted(source, [[1], [0]], mixer)
    save_converted(model, tokenizer, tmp_path / mixer, {"source": str(tmp_path / "source"), "mixer": mixer})
    return tmp_path / "source", tmp_path / mixer


def _config(tmp_path, name, **recurformer) -> RecurFormerRunConfig:
    config = config_from_dict(RecurFormerRunConfig, {
        "recurformer": recurformer, "data": {"seq_len": 16},
        "optim": {"lr": 3e-3, "warmup_steps": 1, "weight_decay": 0.1},
        "train": {"name": name, "out_dir": str(tmp_path / "runs"), "steps": 4, "batch_size": 2,
                  "micro_batch_size": 1, "checkpoint_every": 2, "device": "cpu"},
        "eval": {"every": 0, "max_batches": 1}, "log": {"every": 1, "tensorboard": False, "progress": False}})
    validate(config)
    return config


def _sources():
    tokens = np.random.default_rng(0).integers(0, 97, 4000)
    return DataSources(train=PackedTokenSource(tokens[:3000], 16, 97, seed=1),
                       heldout=PackedTokenSource(tokens[3000:], 16, 97), vocab_size=97)


def test_stage_b_learning_rates_by_parameter_kind(tmp_path):
    _, folder = _folders(tmp_path)
    recipe = RecurFormerRecipe(_config(tmp_path, "lr", student=str(folder), lr_branch=1e-3, lr_base=1e-5))
    model = recipe.build_model(recipe.config, 97)
    groups = recipe.param_groups(model, OptimConfig(weight_decay=0.1))
    by_lr = {}
    for group in groups:
        for p in group["params"]:
            by_lr.setdefault(group["lr"], set()).add(id(p))
    branch = {id(p) for n, p in model.named_parameters() if ".branch." in n}
    assert by_lr[1e-3] == branch and by_lr[1e-5] == {id(p) for p in model.parameters()} - branch
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}
    # window_mamba2: its window holds pretrained rows (the base lr), its Mamba2 part new weights (the branch lr)
    _, hybrid = _folders(tmp_path, "window_mamba2")
    recipe = RecurFormerRecipe(_config(tmp_path, "lr-hybrid", student=str(hybrid), lr_branch=1e-3, lr_base=1e-5))
    model = recipe.build_model(recipe.config, 97)
    lrs = {n: g["lr"] for g in recipe.param_groups(model, OptimConfig()) for n, p in model.named_parameters()
           if any(p is q for q in g["params"])}
    assert {n for n, lr in lrs.items() if lr == 1e-3} == {n for n in lrs if ".branch.recurrent." in n} != set()
    assert any(".branch.window.q_proj" in n and lr == 1e-5 for n, lr in lrs.items())
    frozen = RecurFormerRecipe(_config(tmp_path, "lr0", student=str(folder), lr_base=0.0))
    model = frozen.build_model(frozen.config, 97)
    branch = {id(p) for n, p in model.named_parameters() if ".branch." in n}
    assert {id(p) for g in frozen.param_groups(model, OptimConfig()) for p in g["params"]} == branch


def test_stages_run_on_the_trainer_export_and_resume_exactly(tmp_path):
    source, folder = _folders(tmp_path)
    stage_a = _config(tmp_path, "a", stage="A", student=str(folder))
    result = Trainer(stage_a, sources=_sources(), recipe=RecurFormerRecipe(stage_a)).fit()
    exported = result.run_dir / "model"
    assert json.loads((exported / "conversion.json").read_text())["mixer"] == "mamba2"
    aligned = AutoModelForCausalLM.from_pretrained(exported)
    base = AutoModelForCausalLM.from_pretrained(folder)
    moved = {n for n, p in aligned.state_dict().items() if not torch.equal(p, base.state_dict()[n])}
    assert moved and all(".branch." in n for n in moved)

    # Stage B from Stage A's output: stopped after 2 steps and resumed == 4 steps in one go
    config = _config(tmp_path, "b", student=str(exported), kl_weight=0.5)

    def stop_at_two(trainer, step, loss):
        if step == 2:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted):
        Trainer(config, sources=_sources(), recipe=RecurFormerRecipe(config), callbacks=(stop_at_two,)).fit()
    resumed = Trainer(config, sources=_sources(), recipe=RecurFormerRecipe(config), resume=True).fit()
    straight_config = _config(tmp_path, "b2", student=str(exported), kl_weight=0.5)
    straight = Trainer(straight_config, sources=_sources(), recipe=RecurFormerRecipe(straight_config)).fit()
    assert resumed.losses == straight.losses[2:]
    lines = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]


def test_gates_run_writes_unit_scores(tmp_path, monkeypatch):
    source, _ = _folders(tmp_path)
    config = _config(tmp_path, "gates", stage="gates", student=str(source), gate_window=2, gate_sinks=1)
    monkeypatch.setattr("slimkv.recurformer.data.training_sources", lambda *a, **k: _sources())
    result = train_recurformer(config, progress=False)
    record = json.loads((result.run_dir / "model" / "gates.json").read_text())
    assert np.array(record["unit_scores"]).shape == (2, 2)
    assert np.allclose(np.array(record["unit_scores"]), 1 - np.array(record["alpha"]))
    assert (result.run_dir / "model" / "gates.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((result.run_dir / "recurformer.json").read_text())["steps"] == 4
    alpha = np.array(record["alpha"])
    assert record["spread"] == pytest.approx(alpha.max() - alpha.min()) and record["lr_gates"] == 2e-2


def test_gates_train_at_their_own_learning_rate(tmp_path):
    source, _ = _folders(tmp_path)
    recipe = RecurFormerRecipe(_config(tmp_path, "g", stage="gates", student=str(source), lr_gates=0.05))
    model = recipe.build_model(recipe.config, 97)
    groups = recipe.param_groups(model, OptimConfig(lr=1e-3))
    # the gate values alone, at lr_gates (optim.lr, Stage A's, would leave them where they start)
    assert [(g["lr"], [id(p) for p in g["params"]]) for g in groups] == [(0.05, [id(model.gates)])]
    assert groups[0]["weight_decay"] == 0.0


def test_gates_that_did_not_separate_are_flagged(tmp_path, monkeypatch, caplog):
    source, _ = _folders(tmp_path)
    # a gate learning rate of ~0 leaves every gate at its start: the ranking would be noise
    config = _config(tmp_path, "flat", stage="gates", student=str(source), gate_window=2, gate_sinks=1,
                     lr_gates=1e-12)
    monkeypatch.setattr("slimkv.recurformer.data.training_sources", lambda *a, **k: _sources())
    with caplog.at_level("WARNING", logger="slimkv.recurformer.train"):
        result = train_recurformer(config, progress=False)
    record = json.loads((result.run_dir / "model" / "gates.json").read_text())
    assert record["spread"] < 1e-9
    assert any("did not separate" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("overrides,message", [
    ({}, "'recurformer.student' is required"),
    ({"model": {"arch": "llama"}}, "'model.arch' is not used"),
    ({"recurformer": {"student": "x", "control": True, "stage": "A"}}, "is a Stage B run"),
    ({"recurformer": {"student": "x"}, "data": {"corpus": 0, "reference": 0, "long_documents": 0}},
     "training mixture is empty"),
])
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(config_from_dict(RecurFormerRunConfig, overrides))


def test_recipe_refuses_mismatched_students(tmp_path):
    source, folder = _folders(tmp_path)
    with pytest.raises(ValueError, match="no conversion.json"):
        RecurFormerRecipe(_config(tmp_path, "x", student=str(source)))
    with pytest.raises(ValueError, match="take the original model"):
        RecurFormerRecipe(_config(tmp_path, "x", student=str(folder), control=True))
