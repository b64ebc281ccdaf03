"""Training metrics: one JSON object per line in <run>/metrics.jsonl, mirrored to TensorBoard (<run>/tb)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from .checkpoint import write_text_atomic


class MetricsLogger:
    """Writes on rank 0 only (`enabled=False` elsewhere). Lines look like {"step": 10, "loss": 3.2, ...}."""

    def __init__(self, run_dir: Path, *, jsonl: bool = True, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl" if jsonl and enabled else None
        self.writer = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError as err:
                warnings.warn(f"TensorBoard logging is off: {err}", stacklevel=2)

    def truncate_after(self, step: int) -> None:
        """On resume from `step`, drop lines the interrupted run wrote past it, so the file reads as one run."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, allow_nan=True) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
