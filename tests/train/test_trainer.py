"""Trainer behaviour on tiny models: exact resume, divergence guard, interruption, crash-safe checkpoints."""
import math

import pytest
import torch

from slimkv.train import checkpoint as ckpt
from slimkv.train.metrics import read_metrics
from slimkv.train.trainer import Trainer, TrainingDiverged, TrainingInterrupted

from .helpers import tiny_config


def fit(cfg, **kwargs):
    return Trainer(cfg, **kwargs).fit()


@pytest.mark.parametrize("arch", ["llama", "rodimus_plus"])
def test_resume_is_bitwise_exact(tmp_path, arch):
    full = fit(tiny_config(tmp_path, "full", arch, train={"steps": 6}))
    # same run, stopped after 3 steps by Ctrl-C, then resumed for the rest
    def interrupt_at_3(trainer, step, loss):
        if step == 3:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted):
        fit(tiny_config(tmp_path, "split", arch, train={"steps": 6, "checkpoint_every": 0}),
            callbacks=(interrupt_at_3,))
    second = fit(tiny_config(tmp_path, "split", arch, train={"steps": 6, "checkpoint_every": 0}), resume=True)
    assert len(full.losses) == 6 and len(second.losses) == 3
    assert second.losses == full.losses[3:]
    logged = [m["loss"] for m in read_metrics(tmp_path / "split" / "metrics.jsonl") if "loss" in m]
    assert logged == full.losses


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "nan", train={"steps": 6, "checkpoint_every": 2, "debug_nan_at_step": 4})
    with pytest.raises(TrainingDiverged) as info:
        fit(cfg)
    message = str(info.value)
    assert "loss is nan at step 5" in message and "step-000004" in message and "\n" not in message
    good = ckpt.find_checkpoint(tmp_path / "nan")
    assert good.name == "step-000004"
    state = ckpt.load_full_state(good)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    # resuming from the good checkpoint (NaN hook off) trains on
    resumed = fit(tiny_config(tmp_path, "nan", train={"steps": 6, "checkpoint_every": 2}), resume=True)
    assert resumed.steps == 6 and all(math.isfinite(x) for x in resumed.losses)


def test_huge_lr_diverges_without_saving_bad_weights(tmp_path):
    cfg = tiny_config(tmp_path, "huge", train={"steps": 8, "checkpoint_every": 1},
                      optim={"lr": 1e12, "warmup_steps": 0, "grad_clip": 0.0})
    with pytest.raises(TrainingDiverged):
        fit(cfg)
    saved = ckpt.find_checkpoint(tmp_path / "huge")
    state = ckpt.load_full_state(saved)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_sigterm_saves_checkpoint_then_stops(tmp_path):
    import os
    import signal

    def send_sigterm(trainer, step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        fit(tiny_config(tmp_path, "term", train={"checkpoint_every": 0}), callbacks=(send_sigterm,))
    assert "SIGTERM" in str(info.value) and info.value.checkpoint.name == "step-000002"
    assert ckpt.load_meta(info.value.checkpoint)["step"] == 2


def test_keyboard_interrupt_mid_step_saves_the_previous_step(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, "kbd", train={"checkpoint_every": 0}))
    real_step = Trainer._train_step

    def flaky(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "_train_step", flaky)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.checkpoint.name == "step-000003"


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "crash", train={"steps": 4, "checkpoint_every": 2})
    real_save = torch.save
    calls = {"n": 0}

    def crashing_save(obj, handle, *args, **kwargs):
        # write half a file for the second checkpoint's state, then die (checkpoints save into an open temp file)
        name = str(getattr(handle, "name", handle))
        if "step-000004" in name and "state" in name:
            handle.write(b"PK\x03\x04 truncated")
            raise OSError("disk full")
        calls["n"] += 1
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        fit(cfg)
    monkeypatch.setattr(torch, "save", real_save)
    good = ckpt.find_checkpoint(tmp_path / "crash")
    assert good.name == "step-000002"
    assert ckpt.load_meta(good)["step"] == 2 and "model" in ckpt.load_full_state(good)
    resumed = fit(tiny_config(tmp_path, "crash", train={"steps": 4, "checkpoint_every": 2}), resume=True)
    assert resumed.steps == 4


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    fit(tiny_config(tmp_path, "once", train={"steps": 2}))
    with pytest.raises(ValueError, match="already has checkpoints; pass --resume"):
        fit(tiny_config(tmp_path, "once", train={"steps": 2}))


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    one = fit(tiny_config(tmp_path, "acc1", train={"steps": 3, "micro_batch_size": 4}))
    four = fit(tiny_config(tmp_path, "acc4", train={"steps": 3, "micro_batch_size": 1}))
    torch.testing.assert_close(torch.tensor(four.losses), torch.tensor(one.losses), rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    plain = fit(tiny_config(tmp_path, "plain", "rodimus", train={"steps": 3}))
    recomputed = fit(tiny_config(tmp_path, "ac", "rodimus", train={"steps": 3, "activation_checkpointing": True}))
    torch.testing.assert_close(torch.tensor(recomputed.losses), torch.tensor(plain.losses), rtol=1e-6, atol=1e-6)


def test_outputs_metrics_eval_and_export(tmp_path):
    cfg = tiny_config(tmp_path, "out", train={"steps": 4, "export_model": True}, eval={"every": 2},
                      log={"tensorboard": True})
    result = fit(cfg)
    run = tmp_path / "out"
    assert (run / "config.yaml").exists() and (run / "model" / "config.json").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    records = read_metrics(run / "metrics.jsonl")
    evals = [r for r in records if "heldout_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert result.heldout_loss == evals[-1]["heldout_loss"]
    assert math.isclose(evals[-1]["heldout_ppl"], math.exp(evals[-1]["heldout_loss"]), rel_tol=1e-9)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    assert train_records[-1]["tokens"] == 4 * 4 * 32
    # lr follows warmup (2 steps) then cosine down to min_lr_ratio * lr
    lrs = [r["lr"] for r in train_records]
    assert lrs[0] == pytest.approx(1.5e-3) and lrs[1] == pytest.approx(3e-3) and lrs[2] > lrs[3]


def test_max_seconds_stops_cleanly_with_a_checkpoint(tmp_path):
    result = fit(tiny_config(tmp_path, "timed", train={"steps": 50, "max_seconds": 1e-9, "checkpoint_every": 0}))
    assert result.steps == 1 and result.checkpoint.name == "step-000001"
    assert result.tokens_per_s is None and result.heldout_loss is not None
