"""The training loop behind `slimkv train`: one process on CPU or GPU, or N processes under torchrun (DDP / FSDP2).

    result = Trainer(load_run_config("configs/tiny.yaml")).fit()

Exactness contract: a run of N steps, stopped and resumed for N more, logs bitwise the same losses on CPU as one
run of 2N steps (model, optimizer, schedule, RNG and data position are all restored; the data order is a pure
function of the step, see batches.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..config import config_to_dict, dump_config
from . import checkpoint as ckpt
from .batches import BatchPlan
from .config import RunConfig
from .data_sources import DataSources, build_sources
from .factory import build_model, count_parameters
from .hf_export import save_model_folder
from .metrics import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .parallelize import init_distributed, parallelize, unwrap

# (trainer, step, loss) -> None; called on every rank after each optimizer step (test hooks, custom logging)
StepCallback = Callable[["Trainer", int, float], None]


class TrainingDiverged(ValueError):
    """The loss or gradient norm became NaN/inf; nothing was saved from the bad state."""


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


def _resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("config field 'train.device' is 'cuda' but no CUDA device is available")
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _all_reduce_max(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


class Trainer:
    def __init__(self, config: RunConfig, *, resume: str | bool | None = None,
                 callbacks: tuple[StepCallback, ...] = (), sources: DataSources | None = None):
        """`resume`: None/False = fresh run (refuses to overwrite a run that has checkpoints), True = latest
        checkpoint of this run, a path = that run dir / checkpoint."""
        self.config = config
        self.resume = resume
        self.callbacks = callbacks
        self._sources = sources
        self._stop_signal: str | None = None
        self.run_dir = Path(config.train.out_dir) / config.train.name

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.config
        self.device = _resolve_device(cfg.train.device)
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
        model = build_model(cfg.model, vocab_size, seed=cfg.train.seed)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and cfg.data.seq_len > limit:
            raise ValueError(f"config field 'data.seq_len' ({cfg.data.seq_len}) exceeds the model's position limit "
                             f"max_position_embeddings ({limit})")
        self.params = count_parameters(model)
        model.to(self.device)
        self.model = parallelize(model, parallel=cfg.train.parallel, device=self.device,
                                 activation_checkpointing=cfg.train.activation_checkpointing,
                                 compile_blocks=cfg.train.compile,
                                 bf16=self.bf16 and self.device.type == "cuda")
        self.optimizer = build_optimizer(unwrap(self.model), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.start_step = 0
        self.last_checkpoint: Path | None = None
        if self.resume:
            source = self.run_dir if self.resume is True else Path(self.resume)
            self._load(ckpt.find_checkpoint(source))
        elif self.checkpoint_dir.exists() and any(self.checkpoint_dir.glob("step-*")):
            raise ValueError(f"run directory {str(self.run_dir)!r} already has checkpoints; pass --resume to "
                             "continue it or choose another --train.name")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.run_dir / "config.yaml")
            if self.sources.tokenizer_file is not None:
                _copy_tokenizer(Path(self.sources.tokenizer_file), self.run_dir / "tokenizer")
        self.metrics = MetricsLogger(self.run_dir, jsonl=cfg.log.jsonl, tensorboard=cfg.log.tensorboard,
                                     enabled=self.is_main)
        if self.resume:
            self.metrics.truncate_after(self.start_step)

    # ---------------------------------------------------------------- checkpoints
    def _meta(self, step: int) -> dict[str, Any]:
        return {"step": step, "scheduler": self.scheduler.state_dict(), "config": config_to_dict(self.config),
                "world_size": self.world_size, "data_position": step * self.config.train.batch_size,
                "data_sequences": len(self.sources.train), "tokens_seen": self.tokens_seen}

    def _save(self, step: int) -> Path:
        # never persist a diverged state: the previous checkpoint stays the last good one
        (bad_ranks,) = _all_reduce_sum([0.0 if self._local_params_finite() else 1.0], self.device)
        if bad_ranks > 0:
            raise TrainingDiverged(f"model weights are not finite at step {step}; not saving. last good checkpoint: "
                                   f"{self.last_checkpoint or 'none'}")
        if self.config.train.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            path = ckpt.save_checkpoint(self.checkpoint_dir, step, model_state=None, optimizer_state=None,
                                        meta=self._meta(step), dcp_state={"model": model_state, "optim": optim_state},
                                        keep=self.config.train.keep_checkpoints)
        else:
            model_state = unwrap(self.model).state_dict() if self.is_main else None
            optim_state = self.optimizer.state_dict() if self.is_main else None
            path = ckpt.save_checkpoint(self.checkpoint_dir, step, model_state=model_state,
                                        optimizer_state=optim_state, meta=self._meta(step),
                                        keep=self.config.train.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _local_params_finite(self) -> bool:
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.numel() and not torch.isfinite(local.detach()).all():
                return False
        return True

    def _check_compatible(self, checkpoint: Path, meta: dict[str, Any]) -> None:
        saved_model = dict(meta.get("config", {}).get("model", {}))
        current = config_to_dict(self.config)["model"]
        # compare layer counts as resolved (num_hidden_layers, or layers_by_arch[arch] when that is 0)
        for fields in (saved_model, current):
            if fields.get("num_hidden_layers") == 0:
                fields["num_hidden_layers"] = fields.get("layers_by_arch", {}).get(fields.get("arch"), 0)
        for key in ("arch", "hidden_size", "num_hidden_layers", "mem_size", "expand_ratio", "num_heads",
                    "num_key_value_heads", "window_size", "intermediate_size", "tie_word_embeddings", "vocab_size"):
            if key in saved_model and saved_model[key] != current[key]:
                raise ValueError(f"checkpoint {str(checkpoint)!r} does not match the config: model.{key} is "
                                 f"{saved_model[key]!r} there and {current[key]!r} here")
        saved_train = meta.get("config", {}).get("train", {})
        if saved_train.get("batch_size", self.config.train.batch_size) != self.config.train.batch_size:
            raise ValueError(f"checkpoint {str(checkpoint)!r} was trained with train.batch_size="
                             f"{saved_train['batch_size']}; resuming needs the same global batch")
        saved_sequences = meta.get("data_sequences", len(self.sources.train))
        if saved_sequences != len(self.sources.train):
            raise ValueError(f"checkpoint {str(checkpoint)!r} was trained on data with {saved_sequences} sequences, "
                             f"this config's data has {len(self.sources.train)}; resuming needs the same data")
        saved_format = meta.get("format")
        wanted = "dcp" if self.config.train.parallel == "fsdp" else "full"
        if saved_format != wanted:
            raise ValueError(f"checkpoint {str(checkpoint)!r} has format {saved_format!r} but train.parallel="
                             f"{self.config.train.parallel!r} needs {wanted!r}")

    def _load(self, checkpoint: Path) -> None:
        meta = ckpt.load_meta(checkpoint)
        self._check_compatible(checkpoint, meta)
        if meta["format"] == "dcp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            state = {"model": model_state, "optim": optim_state}
            try:
                dcp.load(state, checkpoint_id=str(checkpoint / ckpt.DCP_DIR))
            except Exception as err:
                raise ValueError(f"checkpoint {str(checkpoint)!r} cannot be loaded: "
                                 f"{' '.join(str(err).split())[:300]}") from None
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            state = ckpt.load_full_state(checkpoint)
            try:
                unwrap(self.model).load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as err:
                detail = " ".join(str(err).split())[:300]
                raise ValueError(f"checkpoint {str(checkpoint)!r} does not match the model: {detail}") from None
        self.scheduler.load_state_dict(meta["scheduler"])
        rng = ckpt.load_rng(checkpoint, self.rank)
        if rng is not None:
            ckpt.set_rng_state(rng)
        self.start_step = int(meta["step"])
        self._resumed_tokens = int(meta.get("tokens_seen", 0))
        self.last_checkpoint = checkpoint

    # ---------------------------------------------------------------- signals
    @contextlib.contextmanager
    def _signal_guard(self):
        """First Ctrl-C / SIGTERM asks the loop to stop after the current step (then save); a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def set_total_steps(self, total_steps: int, warmup_steps: int | None = None) -> None:
        """Move the end of the run mid-run (from a step callback): the loop stops at `total_steps` and the lr
        schedule reaches its minimum there. The main job uses it to plan from measured throughput as it goes."""
        self.config.train.steps = int(total_steps)
        self.scheduler.set_total_steps(total_steps, warmup_steps)

    def request_stop(self, reason: str = "SIGINT") -> None:
        """Ask the loop to save and stop after the current step (what Ctrl-C does)."""
        self._stop_signal = reason

    # ---------------------------------------------------------------- the loop
    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with self._autocast():
            # the models are built with use_cache=True for generate(); training and held-out forwards never step a cache
            logits = self.model(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def _train_step(self, step: int) -> tuple[float, float, float]:
        cfg = self.config
        self.model.train()
        accumulation = self.plan.accumulation
        loss_sum = 0.0
        for micro in range(accumulation):
            batch = self.sources.train.sequences(self.plan.positions(step, micro))
            last = micro == accumulation - 1
            sync = contextlib.nullcontext()
            if cfg.train.parallel == "ddp" and not last:
                sync = self.model.no_sync()
            elif cfg.train.parallel == "fsdp":
                self.model.set_requires_gradient_sync(last)
            with sync:
                loss = self._loss(batch)
                if step == cfg.train.debug_nan_at_step:
                    loss = loss * float("nan")
                (loss / accumulation).backward()
            loss_sum += loss.item()
        (global_loss_sum,) = _all_reduce_sum([loss_sum], self.device)
        mean_loss = global_loss_sum / (accumulation * self.world_size)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss is {mean_loss} at step {step + 1}; stopped without saving. last good "
                                   f"checkpoint: {self.last_checkpoint or 'none'} (lower optim.lr or raise "
                                   "optim.warmup_steps, then --resume)")
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"gradient norm is {grad_norm} at step {step + 1}; stopped without saving. last "
                                   f"good checkpoint: {self.last_checkpoint or 'none'}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm, lr

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean held-out next-token loss (nats) over the first eval.max_batches global batches of the split.

        Held-out batches are cut like training batches (same global size, split over ranks and micro-steps), so the
        number is the same for any world size.
        """
        heldout = self.sources.heldout
        if heldout is None:
            return None
        num_batches = len(heldout) // self.plan.batch_size
        if self.config.eval.max_batches > 0:
            num_batches = min(num_batches, self.config.eval.max_batches)
        if num_batches == 0:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for index in range(num_batches):
            for micro in range(self.plan.accumulation):
                batch = heldout.sequences(self.plan.positions(index, micro))
                total += self._loss(batch).item() * batch.shape[0]
                count += batch.shape[0]
        total, count = _all_reduce_sum([total, float(count)], self.device)
        self.model.train()
        return total / count

    def fit(self) -> TrainResult:
        self._setup()
        cfg = self.config
        self.tokens_seen = getattr(self, "_resumed_tokens", 0)
        result = TrainResult(run_dir=self.run_dir, steps=self.start_step, params=self.params,
                             checkpoint=self.last_checkpoint)
        if self.is_main:
            counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in self.params.items())
            print(f"slimkv train: {cfg.model.arch} ({counts}) on {self.world_size} x {self.device.type}, "
                  f"parallel={cfg.train.parallel}, accumulation={self.plan.accumulation}, run dir {self.run_dir}",
                  flush=True)
        tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
        progress = tqdm(total=cfg.train.steps, initial=self.start_step, disable=not (self.is_main and cfg.log.progress),
                        desc=f"train {cfg.train.name}", unit="step", dynamic_ncols=True)
        step = self.start_step
        started = time.perf_counter()
        # throughput counts time inside optimizer steps only (not eval or checkpoints); the first step of a
        # session (warm-up, compilation) is left out of the session average
        window_tokens, window_seconds, session_tokens, session_seconds = 0, 0.0, 0, 0.0
        try:
            with self._signal_guard():
                while step < cfg.train.steps:
                    rng_at_step_start = ckpt.rng_state()
                    step_started = time.perf_counter()
                    try:
                        loss, grad_norm, lr = self._train_step(step)
                    except KeyboardInterrupt:
                        # interrupted inside the step: weights are still those of `step`; rewind the RNG to match
                        ckpt.set_rng_state(rng_at_step_start)
                        self.optimizer.zero_grad(set_to_none=True)
                        self._stop_signal = "KeyboardInterrupt"
                    else:
                        step_seconds = time.perf_counter() - step_started
                        step += 1
                        self.tokens_seen += tokens_per_step
                        window_tokens, window_seconds = window_tokens + tokens_per_step, window_seconds + step_seconds
                        if step > self.start_step + 1:
                            session_tokens, session_seconds = session_tokens + tokens_per_step, \
                                session_seconds + step_seconds
                        result.losses.append(loss)
                        tokens_per_s = window_tokens / window_seconds if window_seconds > 0 else 0.0
                        progress.update(1)
                        progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
                        if step % cfg.log.every == 0 or step == cfg.train.steps or step == self.start_step + 1:
                            record = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self.tokens_seen,
                                      "tokens_per_s": tokens_per_s}
                            if self.device.type == "cuda":
                                record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                            self.metrics.log(step, record)
                            window_tokens, window_seconds = 0, 0.0
                        for callback in self.callbacks:
                            callback(self, step, loss)
                        if cfg.eval.every > 0 and step % cfg.eval.every == 0 and step < cfg.train.steps:
                            self._log_eval(step, result)
                        if cfg.train.checkpoint_every > 0 and step % cfg.train.checkpoint_every == 0:
                            result.checkpoint = self._save(step)
                    interrupted, out_of_time = self._stop_requested(time.perf_counter() - started)
                    if interrupted:
                        path = self._save(step)
                        raise TrainingInterrupted(
                            f"stopped by {self._stop_signal} after step {step}; checkpoint saved to {path}; "
                            f"continue with --resume", path)
                    if out_of_time:
                        if self.is_main:
                            tqdm.write(f"train.max_seconds ({cfg.train.max_seconds:g}) reached after step {step}")
                        break
            if cfg.eval.every >= 0:
                self._log_eval(step, result)
            if self.last_checkpoint is None or self.last_checkpoint.name != ckpt.checkpoint_name(step):
                result.checkpoint = self._save(step)
            else:
                result.checkpoint = self.last_checkpoint
            if cfg.train.export_model:
                self._export(self.run_dir / "model")
        finally:
            progress.close()
            self.metrics.close()
        result.steps = step
        result.tokens_seen = self.tokens_seen
        result.tokens_per_s = session_tokens / session_seconds if session_seconds > 0 else None
        if self.device.type == "cuda":
            result.peak_memory_bytes = int(_all_reduce_max(torch.cuda.max_memory_allocated(self.device), self.device))
        return result

    def _stop_requested(self, elapsed: float) -> tuple[bool, bool]:
        """(a stop signal arrived on any rank, train.max_seconds is up on rank 0): every rank gets the same answer."""
        signal_flag = 1.0 if self._stop_signal is not None else 0.0
        limit = self.config.train.max_seconds
        time_flag = 1.0 if self.is_main and limit > 0 and elapsed >= limit else 0.0
        signals, time_up = _all_reduce_sum([signal_flag, time_flag], self.device)
        if signals > 0 and self._stop_signal is None:
            self._stop_signal = "a signal on another rank"
        return signals > 0, time_up > 0

    def _log_eval(self, step: int, result: TrainResult) -> None:
        heldout_loss = self.evaluate()
        if heldout_loss is None:
            return
        result.heldout_loss = heldout_loss
        ppl = math.exp(min(heldout_loss, 700.0))
        self.metrics.log(step, {"heldout_loss": heldout_loss, "heldout_ppl": ppl})
        if self.is_main and self.config.log.progress:
            tqdm.write(f"step {step}: held-out loss {heldout_loss:.4f}, ppl {ppl:.2f}")

    def _export(self, target: Path) -> None:
        """Save a Hugging Face folder (safetensors + config + tokenizer when there is one) on rank 0."""
        if self.config.train.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full_state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
        else:
            full_state = None
        if not self.is_main:
            return
        model = unwrap(self.model)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if full_state is not None:
            fresh = build_model(self.config.model, model.config.vocab_size, seed=self.config.train.seed)
            fresh.load_state_dict(full_state)
            model = fresh
        # use_cache, bos/eos/pad ids and a ready tokenizer, so plain generate() and pipeline() work on the folder
        save_model_folder(model, tmp, self.sources.tokenizer_file)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _copy_tokenizer(source: Path, target_dir: Path) -> None:
    """Copy a tokenizer (a tokenizer.json, or the Hugging Face files of its folder) into target_dir."""
    folder = source if source.is_dir() else source.parent
    target_dir.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        shutil.copy(source, target_dir / "tokenizer.json")
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not (source.is_file() and name == "tokenizer.json"):
            shutil.copy(folder / name, target_dir / name)


def train(config: RunConfig, **kwargs) -> TrainResult:
    return Trainer(config, **kwargs).fit()


__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]
