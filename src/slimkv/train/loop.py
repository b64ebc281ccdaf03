"""What the training loop repeats: one optimizer step, a held-out evaluation, stop requests, throughput.

`StepRunner` owns the arithmetic of a step on 1..N ranks (micro-batches, gradient sync, clipping, the divergence
guard); `Trainer.fit` (trainer.py) drives it and decides when to log, evaluate and checkpoint.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import signal
import threading

import torch
import torch.nn.functional as F

from ..errors import UserError
from .batches import BatchPlan
from .config import RunConfig
from .data_sources import DataSources
from .parallelize import all_reduce_sum


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN/inf; nothing was saved from the bad state."""


class StepRunner:
    """One optimizer step, or one pass over the held-out batches, of `model` (possibly DDP/FSDP-wrapped)."""

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, sources: DataSources, plan: BatchPlan,
                 config: RunConfig, device: torch.device, bf16: bool, world_size: int):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.sources, self.plan, self.config = sources, plan, config
        self.device, self.bf16, self.world_size = device, bf16, world_size
        # slimkv models take the shifted targets and compute the loss without materialising the logits
        # (models/modeling.py `targets`, ops/cross_entropy); any other causal LM gets the plain logits loss
        inner = getattr(model, "module", model)
        self.fused_loss = "targets" in inspect.signature(inner.forward).parameters

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if isinstance(batch, tuple):
            # (inputs, targets) from a task source (eval/mqar.py): targets of -100 are not scored
            inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
        else:
            batch = batch.to(self.device, non_blocking=True)
            inputs, targets = batch[:, :-1], batch[:, 1:]
        with self._autocast():
            if self.fused_loss:
                return self.model(input_ids=inputs, targets=targets).loss
            # the models are built with use_cache=True for generate(); training and held-out forwards never step one
            logits = self.model(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def train_step(self, step: int, last_checkpoint=None) -> tuple[float, float, float]:
        """Optimizer step `step` (0-based) -> (mean loss over ranks, gradient norm, lr used).

        Raises TrainingDiverged before the optimizer step when the loss or the gradient norm is not finite.
        """
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
                loss = self.loss(batch)
                if step == cfg.train.debug_nan_at_step:
                    loss = loss * float("nan")
                (loss / accumulation).backward()
            loss_sum += loss.item()
        (global_loss_sum,) = all_reduce_sum([loss_sum], self.device)
        mean_loss = global_loss_sum / (accumulation * self.world_size)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss is {mean_loss} at step {step + 1}; stopped without saving. last good "
                                   f"checkpoint: {last_checkpoint or 'none'} (lower optim.lr or raise "
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
                                   f"good checkpoint: {last_checkpoint or 'none'}")
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
                total += self.loss(batch).item() * batch.shape[0]
                count += batch.shape[0]
        total, count = all_reduce_sum([total, float(count)], self.device)
        self.model.train()
        return total / count

    def params_finite(self) -> bool:
        """True when every rank's parameters are finite (a checkpoint is never written from anything else)."""
        local_ok = True
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.numel() and not torch.isfinite(local.detach()).all():
                local_ok = False
                break
        (bad_ranks,) = all_reduce_sum([0.0 if local_ok else 1.0], self.device)
        return bad_ranks == 0


class StopRequest:
    """Why the loop should stop after the current step (None: keep going). Signal handlers and callbacks set it."""

    def __init__(self):
        self.reason: str | None = None

    @contextlib.contextmanager
    def catch_signals(self):
        """First Ctrl-C / SIGTERM asks the loop to stop after the current step (then save); a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.reason is not None:
                raise KeyboardInterrupt
            self.reason = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def agreed(self, out_of_time: bool, device: torch.device) -> tuple[bool, bool]:
        """(a stop was requested on any rank, time is up on rank 0): every rank gets the same answer."""
        signals, time_up = all_reduce_sum([1.0 if self.reason is not None else 0.0, 1.0 if out_of_time else 0.0],
                                          device)
        if signals > 0 and self.reason is None:
            self.reason = "a signal on another rank"
        return signals > 0, time_up > 0


class Throughput:
    """Tokens per second inside optimizer steps only (not eval or checkpoints): over the current logging window,
    and over the session without its first step (warm-up, compilation)."""

    def __init__(self):
        self.window_tokens, self.window_seconds = 0, 0.0
        self.session_tokens, self.session_seconds = 0, 0.0

    def add(self, tokens: int, seconds: float, first_of_session: bool) -> None:
        self.window_tokens += tokens
        self.window_seconds += seconds
        if not first_of_session:
            self.session_tokens += tokens
            self.session_seconds += seconds

    def window_rate(self) -> float:
        return self.window_tokens / self.window_seconds if self.window_seconds > 0 else 0.0

    def reset_window(self) -> None:
        self.window_tokens, self.window_seconds = 0, 0.0

    def session_rate(self) -> float | None:
        return self.session_tokens / self.session_seconds if self.session_seconds > 0 else None
