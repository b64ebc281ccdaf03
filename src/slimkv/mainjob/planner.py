"""How many optimizer steps fit in the main job's time budget, re-planned after every step from measured speed.

A plan fixed before training from an assumed speed over-runs on a loaded machine and under-trains on a quiet one
(issue 8: 222 steps planned from an assumed 1,600 tokens/s, 370 tokens/s measured). Here the plan is

    steps = step + (time left for training) * (measured tokens/s) / (tokens per step)
    time left for training = deadline - now - (forward-only work after training at the measured eval speed)
                             - after_seconds

where the training speed is the slower of an exponentially weighted average and the last step: load that comes
mid-run shrinks the plan at once, load that goes grows it gradually (a deadline is missed by optimism, not by
caution). The forward-only work is the final held-out evaluation plus the prefills of the memory measurement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class StepPlanner:
    # clock time (same clock as `now` below) by which the whole job should have finished
    deadline: float
    tokens_per_step: int
    # tokens run forward (no backward) after training: the final evaluation and the memory measurement
    eval_tokens: int
    # the rest after training (export, reload, sampling, plots): seconds, measured on the loaded 2-core machine
    after_seconds: float = 12.0
    # never plan fewer steps than this, whatever the clock says
    min_steps: int = 10
    # steps after which an old step time has half its weight in the average
    half_life: float = 8.0
    # forward-only tokens/s relative to training tokens/s until an evaluation has been timed
    assumed_eval_speedup: float = 1.5
    step_seconds: float | None = None
    last_step_seconds: float | None = None
    eval_tokens_per_s: float | None = None
    _provisional: bool = False

    @property
    def planning_seconds(self) -> float | None:
        """Seconds per step the plan assumes: the average, or the last step if that was slower."""
        if self.step_seconds is None:
            return None
        return max(self.step_seconds, self.last_step_seconds or 0.0)

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.step_seconds is None else self.tokens_per_step / self.planning_seconds

    def observe_step(self, seconds: float, provisional: bool = False) -> None:
        """One optimizer step took `seconds`. A provisional time (the first step: setup and warm-up) is replaced by
        the next one instead of being averaged in."""
        if self.step_seconds is None or self._provisional:
            self.step_seconds = seconds
        else:
            weight = 1.0 - 0.5 ** (1.0 / self.half_life)
            self.step_seconds += weight * (seconds - self.step_seconds)
        self.last_step_seconds = seconds
        self._provisional = provisional

    def observe_eval(self, tokens: int, seconds: float) -> None:
        self.eval_tokens_per_s = tokens / max(seconds, 1e-9)

    def after_training_seconds(self) -> float:
        """Predicted seconds from the end of training to the end of the job."""
        rate = self.tokens_per_s
        if rate is None:
            return self.after_seconds
        eval_rate = self.eval_tokens_per_s or self.assumed_eval_speedup * rate
        return self.eval_tokens / eval_rate + self.after_seconds

    def planned_steps(self, step: int, now: float) -> int:
        """Total steps of the run: `step` done so far, plus as many as the measured speed fits before the deadline."""
        if self.tokens_per_s is None:
            raise ValueError("planned_steps needs at least one observed step")
        left = self.deadline - now - self.after_training_seconds()
        more = max(0, math.floor(left * self.tokens_per_s / self.tokens_per_step))
        return max(self.min_steps, step + more)

    def eta_seconds(self, step: int, planned: int) -> float:
        """Seconds until the job ends if the plan holds: the planned steps left, then everything after training."""
        return max(0, planned - step) * (self.planning_seconds or 0.0) + self.after_training_seconds()
