"""MQAR: the generator's contract (every answer recoverable from the context), the trainer source, scoring, and a
tiny model that learns a trivial instance on the project trainer."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimkv.eval.mqar import (IGNORE, ZOOLOGY_TEST, ZOOLOGY_TRAIN, MQARTrainSource, Segment, make_mqar,
                              make_test_sets, parse_segments, query_accuracy, query_slot_log_weights)
from slimkv.eval.mqar_sweep import (PAPER_FIG1B, MQARSweepConfig, RunSpec, best_runs, plan_runs, plot_sweep,
                                    run_sweep, train_and_score)
from slimkv.train.batches import BatchPlan


def check_example(x: np.ndarray, y: np.ndarray, num_pairs: int, vocab_size: int) -> None:
    """Every scored position holds a key whose value is the token after its one occurrence in the context."""
    half = vocab_size // 2
    context = 2 * num_pairs
    keys, values = x[0:context:2], x[1:context:2]
    assert len(set(keys.tolist())) == num_pairs and len(set(values.tolist())) == num_pairs
    assert ((1 <= keys) & (keys < half)).all() and ((half <= values) & (values < vocab_size)).all()
    scored = np.flatnonzero(y != IGNORE)
    assert len(scored) == num_pairs
    assert (scored >= context).all() and ((scored - context) % 2 == 0).all()
    queried = x[scored]
    assert sorted(queried.tolist()) == sorted(keys.tolist())
    for position in scored:
        (where,) = np.flatnonzero(keys == x[position])
        assert y[position] == values[where]
    assert ((0 <= x) & (x < vocab_size)).all()


@settings(max_examples=60, deadline=None)
@given(num_pairs=st.integers(1, 24), extra_slots=st.integers(0, 40), vocab_half=st.integers(25, 600),
       seed=st.integers(0, 2**31 - 1), num_examples=st.integers(1, 5))
def test_every_answer_is_recoverable_from_the_context(num_pairs, extra_slots, vocab_half, seed, num_examples):
    seq_len = 4 * num_pairs + 2 * extra_slots + (seed % 2)
    vocab_size = 2 * vocab_half + (seed % 3 == 0)
    x, y = make_mqar(num_examples, seq_len, num_pairs, vocab_size, seed=seed)
    assert x.shape == y.shape == (num_examples, seq_len) and x.dtype == y.dtype == torch.int64
    for row in range(num_examples):
        check_example(x[row].numpy(), y[row].numpy(), num_pairs, vocab_size)


def test_zoology_segments_and_determinism():
    for segment in ZOOLOGY_TRAIN + ZOOLOGY_TEST:
        x, y = make_mqar(3, segment.seq_len, segment.num_pairs, seed=7)
        for row in range(3):
            check_example(x[row].numpy(), y[row].numpy(), segment.num_pairs, 8192)
    a, b = make_mqar(4, 256, 16, seed=[3, 1]), make_mqar(4, 256, 16, seed=[3, 1])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], make_mqar(4, 256, 16, seed=[3, 2])[0])
    # (1024, 256): the query region has exactly 256 slots, so every slot is a query
    _, y = make_mqar(2, 1024, 256, seed=0)
    assert (y[:, 512::2] != IGNORE).all() and (y[:, 513::2] == IGNORE).all() and (y[:, :512] == IGNORE).all()


def test_query_slots_follow_the_power_law():
    # p(slot) ~ slot^(a - 1): with a = 0.01 the first slot is ~ 2^0.99 times as likely as the second
    x, y = make_mqar(20_000, 2 + 2 * 40, 1, vocab_size=64, seed=0)
    slots = ((y != IGNORE).nonzero()[:, 1] - 2) // 2
    counts = np.bincount(slots.numpy(), minlength=40)
    p = np.exp(query_slot_log_weights(40))
    p /= p.sum()
    assert counts[0] / 20_000 == pytest.approx(p[0], abs=0.01)
    assert counts[0] / counts[1] == pytest.approx(2 ** 0.99, rel=0.15)


def test_bad_segments_are_one_line_errors():
    with pytest.raises(ValueError, match="seq_len >= 4 \\* num_pairs"):
        make_mqar(1, 15, 4)
    with pytest.raises(ValueError, match="too small"):
        make_mqar(1, 64, 10, vocab_size=16)
    with pytest.raises(ValueError, match="SEQ_LENxPAIRS"):
        parse_segments("64-4", 10)
    assert parse_segments("64x4, 256x16:20", 1000) == (Segment(64, 4, 1000), Segment(256, 16, 20))


def test_train_source_serves_whole_batches_of_one_segment_through_the_batch_plan():
    segments = (Segment(16, 2, 40), Segment(32, 4, 20))
    source = MQARTrainSource(segments, batch_size=8, vocab_size=64, seed=5)
    # 40 / 8 + ceil(20 / 8) = 5 + 3 batches per epoch
    assert len(source) == 8 * 8
    plan = BatchPlan(batch_size=8, micro_batch_size=4)
    lengths = []
    for step in range(16):
        parts = [source.sequences(plan.positions(step, micro)) for micro in range(plan.accumulation)]
        inputs = torch.cat([p[0] for p in parts])
        targets = torch.cat([p[1] for p in parts])
        whole = source.global_batch(step)
        assert torch.equal(inputs, whole[0]) and torch.equal(targets, whole[1])
        lengths.append(inputs.shape[1])
        pairs = 2 if inputs.shape[1] == 16 else 4
        for row in range(8):
            check_example(inputs[row].numpy(), targets[row].numpy(), pairs, 64)
    assert lengths[:8].count(16) == 5 and lengths[:8].count(32) == 3
    # a finite train set: epoch 2 revisits epoch 1's batches in another order
    first = sorted(source.global_batch(i)[0].sum().item() for i in range(8))
    second = sorted(source.global_batch(i)[0].sum().item() for i in range(8, 16))
    assert first == second
    assert [source.global_batch(i)[0].sum().item() for i in range(8)] != \
        [source.global_batch(i)[0].sum().item() for i in range(8, 16)]
    # the training examples scored beside the test set are ones the trainer really serves
    served = [tuple(map(tuple, source.global_batch(i)[0].tolist())) for i in range(8)]
    served = {row for batch in served for row in batch}
    kept = source.training_examples(examples=12)
    assert {name: x.shape for name, (x, _) in kept.items()} == {"16x2": (12, 16), "32x4": (12, 32)}
    for x, y in kept.values():
        assert all(tuple(row) in served for row in x.tolist())
        assert (y != -100).sum(1).tolist() == [2 if x.shape[1] == 16 else 4] * 12


def test_test_sets_never_repeat_training_batches():
    source = MQARTrainSource((Segment(16, 2, 64),), batch_size=8, vocab_size=64, seed=0)
    test = make_test_sets((Segment(16, 2, 8),), vocab_size=64, seed=0)["16x2"][0]
    train_rows = {tuple(r) for i in range(8) for r in source.global_batch(i)[0].tolist()}
    assert not any(tuple(r) in train_rows for r in test.tolist())


class LookupOracle(nn.Module):
    """Answers every position with the value after the first earlier occurrence of the current token."""

    def __init__(self, vocab_size: int, wrong_every: int = 0):
        super().__init__()
        self.vocab_size = vocab_size
        self.wrong_every = wrong_every
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab_size)
        count = 0
        for b in range(B):
            for t in range(T):
                earlier = (input_ids[b, :t] == input_ids[b, t]).nonzero()
                if len(earlier):
                    answer = int(input_ids[b, int(earlier[0]) + 1])
                    count += 1
                    if self.wrong_every and count % self.wrong_every == 0:
                        answer = (answer + 1) % self.vocab_size
                    logits[b, t, answer] = 1.0
        return type("Out", (), {"logits": logits})()


def test_query_accuracy_scores_query_positions_only():
    x, y = make_mqar(6, 32, 4, vocab_size=64, seed=3)
    # filler tokens may repeat a key (the oracle answers those too): only query positions may count
    assert query_accuracy(LookupOracle(64), x, y, batch_size=4) == 1.0
    assert query_accuracy(LookupOracle(64, wrong_every=2), x[:1], y[:1]) < 1.0
    silent = LookupOracle(64)
    silent.forward = lambda input_ids, use_cache=False: type("O", (), {"logits": torch.zeros(*input_ids.shape, 64)})()
    assert query_accuracy(silent, x, y) == 0.0


def tiny_sweep_config(tmp_path, **overrides) -> MQARSweepConfig:
    base = dict(archs=("llama",), state_sizes=(8,), d_models=(32,), lrs=(3e-3,), vocab_size=16,
                train_segments=(Segment(8, 2, 100_000),), test_segments=(Segment(8, 2, 256), Segment(16, 4, 64)),
                target="8x2", steps=300, batch_size=32, device="cpu", window_size=4, eval_batch_size=256,
                out_dir=str(tmp_path / "mqar"))
    base.update(overrides)
    return MQARSweepConfig(**base)


# rodimus at 400 steps of 1e-2 sits on the MQAR plateau (~0.67, one of two pairs solved); 600 steps of 2e-2 reach 1.0
# for seeds 0-2, 4, 5 (seed 3 stays on the plateau: the phase transition of this task, not a bug)
@pytest.mark.parametrize("arch, lr, steps", [("llama", 3e-3, 300), ("rodimus", 2e-2, 600)])
def test_a_tiny_model_learns_a_trivial_instance_on_the_trainer(tmp_path, arch, lr, steps):
    config = tiny_sweep_config(tmp_path, archs=(arch,), lrs=(lr,), steps=steps)
    test = make_test_sets(config.test_segments, config.vocab_size, seed=1)
    spec = RunSpec(arch, 32, None if arch == "llama" else 8, lr)
    record = train_and_score(spec, config, test)
    # chance is 1 / 8 values
    assert record["accuracy"]["8x2"] >= 0.9, record
    # it solved the task rather than memorising its examples: training examples score alike
    assert abs(record["train_accuracy"]["8x2"] - record["accuracy"]["8x2"]) < 0.1, record
    assert record["steps"] == steps and record["final_loss"] < 0.3
    assert record["state_bytes"] > 0
    assert not (tmp_path / "mqar" / "runs" / spec.name / "checkpoints").exists()


def test_untrained_model_is_near_chance(tmp_path):
    config = tiny_sweep_config(tmp_path, steps=1, lrs=(1e-9,))
    test = make_test_sets(config.test_segments, config.vocab_size, seed=1)
    record = train_and_score(RunSpec("llama", 32, None, 1e-9), config, test)
    assert record["accuracy"]["8x2"] < 0.35


def test_plan_best_and_plot(tmp_path):
    config = tiny_sweep_config(tmp_path, archs=("rodimus", "llama"), state_sizes=(4, 8), lrs=(1e-3, 1e-2))
    plan = plan_runs(config)
    assert [(r.arch, r.state_size, r.lr) for r in plan] == [
        ("rodimus", 4, 1e-3), ("rodimus", 4, 1e-2), ("rodimus", 8, 1e-3), ("rodimus", 8, 1e-2),
        ("llama", None, 1e-3), ("llama", None, 1e-2)]
    runs = [{"arch": r.arch, "d_model": 32, "state_size": r.state_size, "lr": r.lr, "state_bytes": 10,
             "accuracy": {"8x2": 0.1 * i}} for i, r in enumerate(plan)]
    best = best_runs(runs, "8x2")
    assert [(b["arch"], b["state_size"], b["lr"]) for b in best] == [
        ("llama", None, 1e-2), ("rodimus", 4, 1e-2), ("rodimus", 8, 1e-2)]
    report = {"best": best, "target": "8x2", "header": {}, "paper_fig1b": {a: {str(n): v for n, v in p.items()}
                                                                         for a, p in PAPER_FIG1B.items()}}
    plot_sweep(report, tmp_path / "mqar.png")
    assert (tmp_path / "mqar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no MQAR state-size field"):
        plan_runs(tiny_sweep_config(tmp_path, archs=("hyena",)))
    with pytest.raises(ValueError, match="model.arch"):
        run_sweep(tiny_sweep_config(tmp_path, archs=("hyena",), state_fields={"hyena": "mem_size"}))


def test_best_over_learning_rates_averages_the_seeds(tmp_path, monkeypatch):
    """Seeds run as separate parts (--seed) are averaged before the best lr is picked: one lucky seed does not win."""
    def run(lr, seed, acc):
        return {"arch": "rodimus", "d_model": 32, "state_size": 8, "lr": lr, "seed": seed, "state_bytes": 10,
                "accuracy": {"8x2": acc}}

    # lr 1e-2 has the single best run (0.9) but the worse mean (0.5 against 0.6)
    runs = [run(1e-2, 0, 0.9), run(1e-3, 1, 0.7), run(1e-2, 1, 0.1), run(1e-3, 0, 0.5)]
    [best] = best_runs(runs, "8x2")
    assert best["lr"] == 1e-3 and best["seeds"] == [0, 1] and best["accuracy_per_seed"] == [0.5, 0.7]
    assert best["accuracy"] == pytest.approx(0.6)
    # a run recorded before seeds were (no "seed" key) counts as seed 0
    [old] = best_runs([{k: v for k, v in run(1e-3, 0, 0.4).items() if k != "seed"}], "8x2")
    assert old["seeds"] == [0] and old["accuracy"] == 0.4
    # the plot draws the seeds' range (an error bar) only where several seeds were averaged
    import matplotlib.pyplot as plt

    drawn = []
    real_errorbar = plt.Axes.errorbar
    monkeypatch.setattr(plt.Axes, "errorbar", lambda self, *a, **k: drawn.append(a) or real_errorbar(self, *a, **k))
    plot_sweep({"best": [best, {**old, "state_size": 4}], "target": "8x2", "header": {}, "paper_fig1b": {}},
               tmp_path / "seeds.png")
    assert len(drawn) == 1 and drawn[0][1] == [pytest.approx(0.6)]


def test_a_state_field_the_run_config_lacks_goes_to_the_hf_config(tmp_path):
    from slimkv.eval.mqar_sweep import run_config

    config = tiny_sweep_config(tmp_path, archs=("rodimus",), state_fields={"rodimus": "ssm_state_rows"})
    cfg = run_config(RunSpec("rodimus", 32, 16, 1e-3), config, 0.0)
    assert cfg.model.extra == {"ssm_state_rows": 16}
    cfg = run_config(RunSpec("rodimus", 32, 16, 1e-3), tiny_sweep_config(tmp_path, archs=("rodimus",)), 0.0)
    assert cfg.model.mem_size == 16 and cfg.model.extra == {}
    assert cfg.model.max_position_embeddings == 16 and cfg.data.seq_len == 8


def test_sweep_cli_writes_json_and_png(tmp_path, capsys):
    from slimkv.cli.main import main

    out = tmp_path / "sweep"
    argv = ["eval", "mqar", "--archs", "rodimus,llama", "--state-sizes", "4", "--d-models", "16", "--lrs", "1e-2",
            "--vocab-size", "16", "--train", "8x2:64", "--test", "8x2:16,16x4:8", "--steps", "3",
            "--batch-size", "8", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "mqar.json").read_text())
    assert report["target"] == "16x4" and len(report["runs"]) == 2
    assert {r["arch"] for r in report["runs"]} == {"rodimus", "llama"}
    assert set(report["runs"][0]["accuracy"]) == {"8x2", "16x4"}
    assert report["header"]["git_commit"] and report["paper_fig1b"]["rodimus_plus"]["64"] == 0.91
    assert (out / "mqar.png").is_file()
    printed = capsys.readouterr().out
    assert "rodimus" in printed and "16x4" in printed
    # a second sweep into the same folder would overwrite the first: refused
    assert main(argv) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(["eval", "mqar", "--train", "8x9", "--out", str(tmp_path / "x")]) == 2


def test_parts_run_apart_merge_into_one_sweep(tmp_path, capsys):
    """One process per arch (the GPU recipe of docs/evaluations.md), then --merge: every run kept, best recomputed."""
    from slimkv.cli.main import main

    common = ["--state-sizes", "4", "--d-models", "16", "--lrs", "1e-2", "--vocab-size", "16", "--train", "8x2:64",
              "--test", "8x2:16,16x4:8", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--quiet"]
    for arch in ("rodimus", "llama"):
        assert main(["eval", "mqar", "--archs", arch, "--out", str(tmp_path / arch), *common]) == 0
    parts = [json.loads((tmp_path / a / "mqar.json").read_text()) for a in ("rodimus", "llama")]
    out = tmp_path / "merged"
    assert main(["eval", "mqar", "--merge", f"{tmp_path / 'rodimus'},{tmp_path / 'llama'}", "--out", str(out)]) == 0
    merged = json.loads((out / "mqar.json").read_text())
    assert merged["runs"] == parts[0]["runs"] + parts[1]["runs"]
    assert [(b["arch"], b["accuracy"]) for b in merged["best"]] == [
        (b["arch"], b["accuracy"]) for b in sorted(parts[1]["best"] + parts[0]["best"], key=lambda b: b["arch"])]
    assert len(merged["parts"]) == 2 and (out / "mqar.png").is_file()
    assert "accuracy at 16x4:" in capsys.readouterr().out  # the parts' target, not the default 1024x256
    # a part of another protocol does not merge silently
    other = json.loads((tmp_path / "llama" / "mqar.json").read_text())
    other["target"] = "8x2"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mqar.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(["eval", "mqar", "--merge", f"{tmp_path / 'rodimus'},{tmp_path / 'other'}",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "different protocols" in capsys.readouterr().err
