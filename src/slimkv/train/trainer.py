"""The training loop behind `slimkv train`: one process on CPU or GPU, or N processes under torchrun (DDP / FSDP2).

    result = Trainer(load_run_config("configs/tiny.yaml")).fit()

This file builds the parts and drives the loop; the parts live beside it:
    state.py   the run folder's lock, checkpoints save/resume and the resume rules
    loop.py    one optimizer step, held-out evaluation, stop requests, throughput
    export.py  the Hugging Face export and the tokenizer copy

Exactness contract: a run of N steps, stopped and resumed for N more, logs bitwise the same losses on CPU as one
run of 2N steps (model, optimizer, schedule, RNG and data position are all restored; the data order is a pure
function of the step, see batches.py).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import dump_config
from ..device import resolve_device
from ..errors import UserError, os_error_message
from . import checkpoint as ckpt
from .batches import BatchPlan
from .config import RunConfig, check_seq_len, validate
from .data_sources import DataSources, build_sources
from .export import copy_tokenizer
from .factory import count_parameters
from .loop import StepRunner, StopRequest, Throughput, TrainingDiverged
from .metrics import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .parallelize import all_reduce_max, init_distributed, parallelize, unwrap
from .recipe import ConfigModelRecipe, Recipe
from .state import Checkpointer, RunFolder

logger = logging.getLogger(__name__)

# (trainer, step, loss) -> None; called on every rank after each optimizer step (test hooks, custom logging)
StepCallback = Callable[["Trainer", int, float], None]


class TrainingInterrupted(Exception):
    """Ctrl-C / SIGTERM: a checkpoint of the last completed step was saved."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    heldout_loss: float | None = None
    params: dict[str, int] = field(default_factory=dict)
    checkpoint: Path | None = None
    # mean training throughput of this session (first step excluded); peak CUDA memory over ranks
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None

    @property
    def heldout_ppl(self) -> float | None:
        return None if self.heldout_loss is None else math.exp(min(self.heldout_loss, 700.0))


class Trainer:
    def __init__(self, config: RunConfig, *, resume: str | bool | None = None,
                 callbacks: tuple[StepCallback, ...] = (), sources: DataSources | None = None,
                 allow_config_change: bool = False, recipe: Recipe | None = None):
        """`resume`: None/False = fresh run (refuses to overwrite a run that has checkpoints), True = latest
        checkpoint of this run, a path = that run dir / checkpoint. `allow_config_change`: resume even though data
        or schedule settings differ from the checkpoint's (state.py lists the rules). `recipe`: what to train
        (recipe.py; default: the config's `model` section)."""
        self.config = config
        self.recipe = recipe or ConfigModelRecipe(config)
        self.resume = resume
        self.allow_config_change = allow_config_change
        self.callbacks = callbacks
        self._sources = sources
        self.stop = StopRequest()
        self.run_dir = Path(config.train.out_dir) / config.train.name

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.config
        # a config built in code (dataclasses.replace, a hand-made RunConfig) gets the same checks as a loaded one
        validate(cfg, check_model=isinstance(self.recipe, ConfigModelRecipe))
        self.device = resolve_device(cfg.train.device, what="config field 'train.device'",
                                     index=int(os.environ.get("LOCAL_RANK", "0")))
        self.rank, self.local_rank, self.world_size = init_distributed(cfg.train.parallel, self.device.type)
        self.is_main = self.rank == 0
        self.bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and self.device.type == "cuda")
        self.plan = BatchPlan(cfg.train.batch_size, cfg.train.micro_batch_size, self.world_size, self.rank)
        self.sources = self._sources or build_sources(cfg.data)
        vocab_size = cfg.model.vocab_size or self.sources.vocab_size
        if vocab_size < self.sources.vocab_size:
            raise ValueError(f"config field 'model.vocab_size' ({vocab_size}) is smaller than the tokenizer's "
                             f"vocabulary ({self.sources.vocab_size})")
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        model = self.recipe.build_model(cfg, vocab_size)
        # a recipe's model is only known now (its limit is not the model section's)
        check_seq_len(cfg.data.seq_len, getattr(model.config, "max_position_embeddings", None))
        self.params = count_parameters(model)
        model.to(self.device)
        self.model = parallelize(model, parallel=cfg.train.parallel, device=self.device,
                                 activation_checkpointing=cfg.train.activation_checkpointing,
                                 compile_blocks=cfg.train.compile,
                                 bf16=self.bf16 and self.device.type == "cuda")
        self.optimizer = build_optimizer(unwrap(self.model), cfg.optim,
                                         self.recipe.param_groups(unwrap(self.model), cfg.optim))
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.steps = StepRunner(self.model, self.optimizer, self.scheduler, self.sources, self.plan, cfg,
                                self.device, self.bf16, self.world_size)
        self.checkpoints = Checkpointer(self.run_dir, cfg, rank=self.rank, world_size=self.world_size)
        self._resume_from = self.run_dir if self.resume is True else Path(self.resume) if self.resume else None
        if self._resume_from is not None and not self._resume_from.exists():
            raise FileNotFoundError(f"{'run directory' if self.resume is True else 'checkpoint path'} "
                                    f"{str(self._resume_from)!r} does not exist; nothing to resume")
        # from here on this process is the only writer of the run folder
        self.run_folder = RunFolder(self.run_dir, is_main=self.is_main, device=self.device)
        self.run_folder.acquire()
        try:
            self._open_run()
        except BaseException:
            self.run_folder.release(failed_setup=True)
            raise

    def _open_run(self) -> None:
        cfg = self.config
        self.start_step, self.tokens_seen = 0, 0
        if self._resume_from is not None:
            point = self.checkpoints.resume(self._resume_from, self.model, self.optimizer, self.scheduler,
                                            data_sequences=len(self.sources.train),
                                            allow_config_change=self.allow_config_change)
            self.start_step, self.tokens_seen = point.step, point.tokens_seen
        elif self.checkpoints.has_checkpoints():
            raise ValueError(f"run directory {str(self.run_dir)!r} already has checkpoints; pass --resume to "
                             "continue it or choose another --train.name")
        if self.is_main:
            dump_config(cfg, self.run_dir / "config.yaml")
            if self.sources.tokenizer_file is not None:
                copy_tokenizer(Path(self.sources.tokenizer_file), self.run_dir / "tokenizer")
        # lines and TensorBoard events a killed run wrote past the resumed step are dropped
        self.metrics = MetricsLogger(self.run_dir, jsonl=cfg.log.jsonl, tensorboard=cfg.log.tensorboard,
                                     enabled=self.is_main, purge_step=self.start_step + 1)
        self.metrics.truncate_after(self.start_step)

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpoints.last

    # ---------------------------------------------------------------- steps
    def _train_step(self, step: int) -> tuple[float, float, float]:
        return self.steps.train_step(step, self.last_checkpoint)

    def evaluate(self) -> float | None:
        """Mean held-out next-token loss (nats); see StepRunner.evaluate."""
        return self.steps.evaluate()

    def set_total_steps(self, total_steps: int, warmup_steps: int | None = None) -> None:
        """Move the end of the run mid-run (from a step callback): the loop stops at `total_steps` and the lr
        schedule reaches its minimum there. The main job uses it to plan from measured throughput as it goes."""
        self.config.train.steps = int(total_steps)
        self.scheduler.set_total_steps(total_steps, warmup_steps)

    def request_stop(self, reason: str = "SIGINT") -> None:
        """Ask the loop to save and stop after the current step (what Ctrl-C does)."""
        self.stop.reason = reason

    def _save(self, step: int) -> Path:
        # never persist a diverged state: the previous checkpoint stays the last good one
        if not self.steps.params_finite():
            raise TrainingDiverged(f"model weights are not finite at step {step}; not saving. last good checkpoint: "
                                   f"{self.last_checkpoint or 'none'}")
        try:
            return self.checkpoints.save(step, self.model, self.optimizer, self.scheduler,
                                         tokens_seen=self.tokens_seen, data_sequences=len(self.sources.train))
        except OSError as err:
            problem = os_error_message(err)
            if problem is None:
                raise
            raise UserError(f"{problem}; checkpoint {ckpt.checkpoint_name(step)} was not saved, the last good one is "
                            f"{self.last_checkpoint or 'none'}") from err

    def _log_eval(self, step: int, result: TrainResult) -> None:
        heldout_loss = self.evaluate()
        if heldout_loss is None:
            return
        result.heldout_loss = heldout_loss
        ppl = math.exp(min(heldout_loss, 700.0))
        self.metrics.log(step, {"heldout_loss": heldout_loss, "heldout_ppl": ppl})
        if self.is_main and self.config.log.progress:
            logger.info("step %d: held-out loss %.4f, ppl %.2f", step, heldout_loss, ppl)

    def _after_step(self, step: int, loss: float, grad_norm: float, lr: float, throughput: Throughput,
                    result: TrainResult) -> None:
        """Log, call back, evaluate and checkpoint at the cadence the config asks for, after step `step` (1-based)."""
        cfg = self.config
        if step % cfg.log.every == 0 or step == cfg.train.steps or step == self.start_step + 1:
            record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens_seen,
                      "tokens_per_s": throughput.window_rate()}
            if self.device.type == "cuda":
                record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.metrics.log(step, record)
            throughput.reset_window()
        for callback in self.callbacks:
            callback(self, step, loss)
        if cfg.eval.every > 0 and step % cfg.eval.every == 0 and step < cfg.train.steps:
            self._log_eval(step, result)
        if cfg.train.checkpoint_every > 0 and step % cfg.train.checkpoint_every == 0:
            result.checkpoint = self._save(step)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        self._setup()
        try:
            return self._fit()
        finally:
            self.run_folder.release()

    def _fit(self) -> TrainResult:
        cfg = self.config
        result = TrainResult(run_dir=self.run_dir, steps=self.start_step, params=self.params,
                             checkpoint=self.last_checkpoint)
        if self.is_main:
            counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.params.items())
            logger.info("slimkv train: %s (%s) on %d x %s, parallel=%s, accumulation=%d, run dir %s",
                        self.recipe.name, counts, self.world_size, self.device.type, cfg.train.parallel, self.plan.accumulation,
                        self.run_dir)
        tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
        progress = tqdm(total=cfg.train.steps, initial=self.start_step, disable=not (self.is_main and cfg.log.progress),
                        desc=f"train {cfg.train.name}", unit="step", dynamic_ncols=True)
        step = self.start_step
        started = time.perf_counter()
        throughput = Throughput()
        try:
            # log lines go above the progress bar instead of through it
            with self.stop.catch_signals(), logging_redirect_tqdm(loggers=[logging.getLogger("slimkv")]):
                while step < cfg.train.steps:
                    rng_at_step_start = ckpt.rng_state()
                    step_started = time.perf_counter()
                    try:
                        loss, grad_norm, lr = self._train_step(step)
                    except KeyboardInterrupt:
                        # interrupted inside the step: weights are still those of `step`; rewind the RNG to match
                        ckpt.set_rng_state(rng_at_step_start)
                        self.optimizer.zero_grad(set_to_none=True)
                        self.stop.reason = "KeyboardInterrupt"
                    else:
                        step += 1
                        self.tokens_seen += tokens_per_step
                        throughput.add(tokens_per_step, time.perf_counter() - step_started,
                                       first_of_session=step == self.start_step + 1)
                        result.losses.append(loss)
                        progress.update(1)
                        progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{throughput.window_rate():,.0f}")
                        self._after_step(step, loss, grad_norm, lr, throughput, result)
                    limit = cfg.train.max_seconds
                    out_of_time = self.is_main and limit > 0 and time.perf_counter() - started >= limit
                    interrupted, out_of_time = self.stop.agreed(out_of_time, self.device)
                    if interrupted:
                        path = self._save(step)
                        raise TrainingInterrupted(
                            f"stopped by {self.stop.reason} after step {step}; checkpoint saved to {path}; "
                            f"continue with --resume", path)
                    if out_of_time:
                        if self.is_main:
                            logger.info("train.max_seconds (%g) reached after step %d", cfg.train.max_seconds, step)
                        break
            if cfg.eval.every >= 0:
                self._log_eval(step, result)
            if self.last_checkpoint is None or self.last_checkpoint.name != ckpt.checkpoint_name(step):
                result.checkpoint = self._save(step)
            else:
                result.checkpoint = self.last_checkpoint
            if cfg.train.export_model:
                self.recipe.export(self.model, cfg, self.sources, self.run_dir / "model", is_main=self.is_main)
        finally:
            progress.close()
            self.metrics.close()
        result.steps = step
        result.tokens_seen = self.tokens_seen
        result.tokens_per_s = throughput.session_rate()
        if self.device.type == "cuda":
            result.peak_memory_bytes = int(all_reduce_max(torch.cuda.max_memory_allocated(self.device), self.device))
        return result


def train(config: RunConfig, **kwargs) -> TrainResult:
    return Trainer(config, **kwargs).fit()


__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]
