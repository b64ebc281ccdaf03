"""Run folders (train/state.py, metrics.py, checkpoint.py): one writer at a time, crash- and kill-safe checkpoints,
resume rules, torn metrics lines, TensorBoard purge, full disk, and config values refused before anything is written.
Each CLI case checks the exit code, the one line on stderr, and that the run folder is unchanged."""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from slimkv.cli.main import main
from slimkv.train import checkpoint as ckpt
from slimkv.train.metrics import read_metrics
from slimkv.train.trainer import Trainer, TrainingInterrupted
from tests.fs_fixtures import tmpfs, tree_digest

from .helpers import tiny_config, tiny_config_dict

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def write_config(tmp_path: Path, name: str = "run", out_dir: Path | None = None, **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(out_dir or tmp_path / "runs", name, **sections)))
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The error of a failed command: exactly one `slimkv <cmd>: error:` line, last, and no traceback (progress
    messages logged to stderr before the failure may precede it)."""
    lines = err.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def metric_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def wait_for_lines(path: Path, lines: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (path.exists() and path.read_text().count("\n") >= lines):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the training never got going"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------- lock
def test_a_second_trainer_on_the_same_run_folder_is_refused_naming_the_first(tmp_path, capsys):
    config = write_config(tmp_path, "shared", train={"steps": 100000, "checkpoint_every": 5})
    first = subprocess.Popen([sys.executable, "-m", "slimkv.cli.main", "train", str(config)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "shared"
    try:
        wait_for_lines(run_dir / "metrics.jsonl", 3, first)
        code, err = run_cli(capsys, "train", config)
        assert code == 2 and f"run folder {str(run_dir)!r} is in use by another process (PID {first.pid})" \
            in one_line(err)
        code, err = run_cli(capsys, "train", config, "--resume")
        assert code == 2 and f"(PID {first.pid})" in one_line(err)
    finally:
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 130, first_err
    # one writer only: every step logged once, in order
    steps = metric_steps(run_dir)
    assert steps == list(range(1, len(steps) + 1))


# ---------------------------------------------------------------------------------------------------- kills
KILL_MID_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    from slimkv.train import checkpoint
    real = checkpoint._atomic_torch_save

    def dying(obj, path):
        if path.parent.name == "step-000004.tmp" and path.name == "state.pt":
            def half_then_die(handle):
                handle.write(b"PK\\x03\\x04" + b"\\x00" * 4096)
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return checkpoint.atomic_write(path, half_then_die)
        return real(obj, path)

    checkpoint._atomic_torch_save = dying
    from slimkv.cli.main import main
    sys.exit(main(["train", sys.argv[1]]))
""")


def test_sigkill_during_a_checkpoint_leaves_the_last_good_one_loadable(tmp_path, capsys):
    config = write_config(tmp_path, "killed", train={"steps": 6, "checkpoint_every": 2})
    proc = subprocess.run([sys.executable, "-c", KILL_MID_CHECKPOINT, str(config)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    checkpoints = tmp_path / "runs" / "killed" / "checkpoints"
    good = ckpt.find_checkpoint(checkpoints.parent)
    assert good.name == "step-000002" and ckpt.is_intact(good)
    assert (checkpoints / "latest").read_text().strip() == "step-000002"
    # the kill left its partial step-000004.tmp; resuming replaces it and finishes the run
    assert (checkpoints / "step-000004.tmp").is_dir()
    code, err = run_cli(capsys, "train", config, "--resume")
    assert code == 0, err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-000004", "step-000006"]
    assert metric_steps(checkpoints.parent) == [1, 2, 3, 4, 5, 6]


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, capsys):
    # a checkpoint every step: on this tiny model most of the time goes into writing checkpoints
    config = write_config(tmp_path, "anytime", train={"steps": 100000, "checkpoint_every": 1, "keep_checkpoints": 2})
    run_dir = tmp_path / "runs" / "anytime"
    for lines in (4, 9):
        proc = subprocess.Popen([sys.executable, "-m", "slimkv.cli.main", "train", str(config),
                                 *(["--resume"] if lines > 4 else [])], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_for_lines(run_dir / "metrics.jsonl", lines, proc)
        time.sleep(0.37)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        latest = ckpt.find_checkpoint(run_dir)
        assert ckpt.is_intact(latest), latest
    # and the run continues from it, a few steps past wherever the last kill left it (the kills land by time, so
    # the step they interrupt depends on the machine's speed)
    final = int(ckpt.find_checkpoint(run_dir).name.split("-")[1]) + 3
    code, err = run_cli(capsys, "train", config, "--resume", f"--train.steps={final}", "--allow-config-change")
    assert code == 0, err
    assert metric_steps(run_dir) == list(range(1, final + 1))


# ---------------------------------------------------------------------------------------------------- resume rules
def _interrupted_run(tmp_path, name, stop_at, **train):
    cfg = tiny_config(tmp_path / "runs", name, train={"steps": 6, "checkpoint_every": 0, **train},
                      log={"tensorboard": True})

    def stop(trainer, step, loss):
        if step == stop_at:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted):
        Trainer(cfg, callbacks=(stop,)).fit()
    return tmp_path / "runs" / name


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_resume_works(tmp_path, capsys, caplog):
    run_dir = _interrupted_run(tmp_path, "torn", stop_at=4)
    metrics = run_dir / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"step": 5, "loss": 3.')  # a kill mid-write
    assert metric_steps(run_dir) == [1, 2, 3, 4]
    assert "dropped its torn last line 5" in caplog.text
    config = write_config(tmp_path, "torn", log={"tensorboard": True})
    code, err = run_cli(capsys, "train", config, "--resume")
    assert code == 0, err
    assert metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert metrics.read_text().endswith("}\n")


def test_a_damaged_middle_metrics_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON line"):
        read_metrics(path)


def test_tensorboard_purges_the_steps_a_killed_run_logged_past_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path / "runs", "tb", train={"steps": 6, "checkpoint_every": 2}, log={"tensorboard": True})

    def crash(trainer, step, loss):
        if step == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        Trainer(cfg, callbacks=(crash,)).fit()
    # steps 1..3 are in TensorBoard, the checkpoint holds step 2: the resumed run logs 3..6 again
    Trainer(cfg, resume=True).fit()
    tb = tmp_path / "runs" / "tb" / "tb"
    assert len(list(tb.glob("events.out.tfevents*"))) == 2
    events = EventAccumulator(str(tb))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]


def test_a_corrupt_latest_checkpoint_names_the_newest_intact_one(tmp_path, capsys):
    config = write_config(tmp_path, "victim", train={"steps": 3, "checkpoint_every": 1, "keep_checkpoints": 3})
    assert run_cli(capsys, "train", config)[0] == 0
    checkpoints = tmp_path / "runs" / "victim" / "checkpoints"
    for step in (3, 2):
        state = checkpoints / ckpt.checkpoint_name(step) / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = tree_digest(checkpoints.parent)
    code, err = run_cli(capsys, "train", config, "--resume")
    intact = checkpoints / "step-000001"
    assert code == 2 and "step-000003/state.pt' is corrupt or truncated" in one_line(err)
    assert f"the newest intact checkpoint is {str(intact)!r}: continue from it with --resume {intact}" in err
    assert tree_digest(checkpoints.parent) == before
    code, err = run_cli(capsys, "train", config, "--resume", intact)
    assert code == 0, err
    assert all(ckpt.is_intact(checkpoints / ckpt.checkpoint_name(s)) for s in (1, 2, 3))
    assert metric_steps(checkpoints.parent) == [1, 2, 3]


def test_resume_refuses_changed_data_or_schedule_settings_unless_allowed(tmp_path, capsys):
    config = write_config(tmp_path, "sched", train={"steps": 5})
    assert run_cli(capsys, "train", config)[0] == 0
    run_dir = tmp_path / "runs" / "sched"
    before = tree_digest(run_dir)
    cases = [(("--train.steps=10",), "train.steps 5 -> 10"), (("--data.seed=7",), "data.seed 1234 -> 7"),
             (("--optim.lr=0.01", "--optim.warmup_steps=1"), "optim.lr 0.003 -> 0.01; optim.warmup_steps 2 -> 1")]
    for extra, needle in cases:
        code, err = run_cli(capsys, "train", config, "--resume", *extra)
        assert code == 2 and needle in one_line(err) and "--allow-config-change" in err, err
    assert tree_digest(run_dir) == before
    # settings that do not change what is learned are free to change
    code, err = run_cli(capsys, "train", config, "--resume", "--log.every=2", "--eval.max_batches=1")
    assert code == 0, err
    code, err = run_cli(capsys, "train", config, "--resume", "--train.steps=10", "--allow-config-change")
    assert code == 0, err
    assert metric_steps(run_dir)[-1] == 10


def test_resume_of_a_run_that_does_not_exist_creates_nothing(tmp_path, capsys):
    config = write_config(tmp_path, "ghost")
    code, err = run_cli(capsys, "train", config, "--resume")
    assert code == 2 and "does not exist; nothing to resume" in one_line(err)
    code, err = run_cli(capsys, "train", config, "--resume", tmp_path / "elsewhere")
    assert code == 2 and "does not exist" in one_line(err)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("disk", ["tmpfs", "patched writer"])
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                                       monkeypatch, disk):
    from slimkv import io as sio
    from slimkv.train import state

    (tmp_path / "disk").mkdir()
    with tmpfs(tmp_path / "disk", 8 << 20) if disk == "tmpfs" else contextlib.nullcontext(False) as mounted:
        if disk == "tmpfs" and not mounted:
            pytest.skip("cannot mount a tmpfs here (the patched-writer case still runs)")
        disk = tmp_path / "disk"
        config = write_config(tmp_path, "full", out_dir=disk / "runs", train={"steps": 6, "checkpoint_every": 2})
        ballast = disk / "ballast"
        real_save = ckpt.save_checkpoint

        def fill_the_disk_first(checkpoint_dir, step, **kwargs):
            if step == 4:
                if mounted:
                    # a real full disk: fill what is left
                    with open(ballast, "wb") as handle:
                        try:
                            while True:
                                handle.write(b"\0" * (64 << 10))
                                handle.flush()
                        except OSError as err:
                            assert err.errno == errno.ENOSPC
                else:
                    # no tmpfs here: a patched writer that fails the way a full disk does
                    def no_space(self, data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                    monkeypatch.setattr(sio._TrackedFileIO, "write", no_space)
            return real_save(checkpoint_dir, step, **kwargs)

        monkeypatch.setattr(state.ckpt, "save_checkpoint", fill_the_disk_first)
        code, err = run_cli(capsys, "train", config)
        checkpoints = disk / "runs" / "full" / "checkpoints"
        assert code == 2 and "no space left on the device holding" in one_line(err)
        assert f"checkpoint step-000004 was not saved, the last good one is {checkpoints / 'step-000002'}" in err
        assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-000002"]
        assert ckpt.is_intact(checkpoints / "step-000002")
        # space freed: the run resumes from the last good checkpoint and finishes
        ballast.unlink(missing_ok=True)
        monkeypatch.undo()
        code, err = run_cli(capsys, "train", config, "--resume")
        assert code == 0, err
        assert ckpt.find_checkpoint(checkpoints.parent).name == "step-000006"


# ---------------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("override, needle", [
    ("--optim.lr=inf", "config field 'optim.lr' must be a finite number, got 'inf'"),
    ("--optim.lr=nan", "config field 'optim.lr' must be a finite number"),
    ("--optim.lr=0", "config field 'optim.lr' must be > 0, got 0.0"),
    ("--optim.weight_decay=-1", "config field 'optim.weight_decay' must be >= 0, got -1.0"),
    ("--optim.beta1=1", "config field 'optim.beta1' must be >= 0 and < 1, got 1.0"),
    ("--optim.beta2=-0.1", "config field 'optim.beta2' must be >= 0 and < 1"),
    ("--optim.eps=0", "config field 'optim.eps' must be > 0"),
    ("--optim.grad_clip=-1", "config field 'optim.grad_clip' must be >= 0"),
    ("--model.mem_size=0", "config field 'model.mem_size' must be >= 1, got 0"),
    ("--model.expand_ratio=0", "config field 'model.expand_ratio' must be > 0, got 0.0"),
    ("--model.window_size=0", "config field 'model.window_size' must be >= 2 and even, got 0"),
    ("--model.window_size=15", "config field 'model.window_size' must be >= 2 and even, got 15"),
    ("--model.num_heads=3", "config field 'model.num_heads' (3) must divide 'model.hidden_size' (32)"),
    ("--model.hidden_size=-8", "config field 'model.hidden_size' must be >= 1"),
    ("--model.vocab_size=-1", "config field 'model.vocab_size' must be >= 1 (or 0), got -1"),
    ("--model.num_hidden_layers=0 --model.layers_by_arch.llama=0",
     "config field 'model.layers_by_arch.llama' must be >= 1, got 0"),
    ("--train.steps=0", "config field 'train.steps' must be >= 1"),
    ("--train.keep_checkpoints=-1", "config field 'train.keep_checkpoints' must be >= 0"),
    ("--train.max_seconds=-5", "config field 'train.max_seconds' must be >= 0"),
    ("--eval.every=-2", "config field 'eval.every' must be >= 0 (or -1), got -2"),
    ("--log.every=0", "config field 'log.every' must be >= 1"),
    ("--data.synthetic_tokens=10", "config field 'data.synthetic_tokens' (10) must be at least 'data.seq_len' + 1"),
    ("--optim.weight_decy=0", "unknown config field 'optim.weight_decy'; did you mean 'optim.weight_decay'?"),
])
def test_bad_values_fail_before_a_run_folder_exists(tmp_path, capsys, override, needle):
    config = write_config(tmp_path, "bad")
    code, err = run_cli(capsys, "train", config, *override.split())
    assert code == 2 and needle in one_line(err), err
    assert not (tmp_path / "runs").exists()


def test_rodimus_config_checks_every_size_and_rate():
    from slimkv import RodimusConfig

    cases = [({"mem_size": 0}, "'mem_size' must be an integer >= 1, got 0"),
             ({"expand_ratio": 0}, "'expand_ratio' must be a finite number > 0"),
             ({"window_size": 0}, "'window_size' must be a positive even number"),
             ({"window_size": 7}, "'window_size' must be a positive even number"),
             ({"rope_theta": float("inf")}, "'rope_theta' must be a finite number > 0"),
             ({"conv_size": 0}, "'conv_size' must be an integer >= 1"),
             ({"num_heads": 0}, "'num_heads' must be an integer >= 1"),
             ({"rotary_dim": 3, "block_type": "rodimus_plus", "num_heads": 2}, "'rotary_dim' must be an even number"),
             ({"input_gate_low_rank": 0}, "'input_gate_low_rank' must be 'auto' or an integer >= 1")]
    for kwargs, needle in cases:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            RodimusConfig(hidden_size=64, num_hidden_layers=2, vocab_size=50, **kwargs)
    assert RodimusConfig(hidden_size=64, num_hidden_layers=2, vocab_size=50, window_size=None).window is None


def test_checkpoints_configs_and_exports_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(tiny_config(tmp_path / "runs", "modes", train={"steps": 2, "checkpoint_every": 1,
                                                               "export_model": True})).fit()
    finally:
        os.umask(old)
    run_dir = tmp_path / "runs" / "modes"
    step = run_dir / "checkpoints" / "step-000002"
    for path in (step / "state.pt", step / "meta.pt", step / "rng-rank00000.pt", run_dir / "checkpoints" / "latest",
                 run_dir / "config.yaml", run_dir / "model" / "config.json"):
        assert oct(path.stat().st_mode & 0o777) == "0o644", path
    for path in (step, run_dir / "model"):
        assert oct(path.stat().st_mode & 0o777) == "0o755", path
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".model.")]
