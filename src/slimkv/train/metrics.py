"""Training metrics: one JSON object per line in <run>/metrics.jsonl, mirrored to TensorBoard (<run>/tb).

A kill can leave the last line half-written: readers drop such a torn last line with a warning (any other bad
line is an error naming the file and line). On resume from step S, lines past S are dropped and TensorBoard is
told to purge its events past S (`purge_step`), so both read as one run.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import atomic_write_text

logger = logging.getLogger(__name__)


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                logger.warning("%s: dropped its torn last line %d (a run stopped while writing it: %s)", path,
                               number, err.msg)
                continue
            raise UserError(f"{path}:{number} is not a JSON line ({err.msg}); the metrics file is damaged") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number} is not a JSON object; the metrics file is damaged")
        records.append(record)
    return records


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file (a torn last line dropped with a warning)."""
    return _parse_lines(path)


class MetricsLogger:
    """Writes on rank 0 only (`enabled=False` elsewhere). Lines look like {"step": 10, "loss": 3.2, ...}.

    `purge_step`: TensorBoard drops events at or after this step that earlier (killed) runs wrote into <run>/tb.
    """

    def __init__(self, run_dir: Path, *, jsonl: bool = True, tensorboard: bool = True, enabled: bool = True,
                 purge_step: int | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl" if jsonl and enabled else None
        self.writer = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
            except ImportError as err:
                warnings.warn(f"TensorBoard logging is off: {err}", stacklevel=2)

    def truncate_after(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run's checkpoint; 0 for a fresh start), so the file reads as one
        run, and end it with a newline so that appends never join a torn line."""
        if self.path is None or not self.path.exists():
            return
        kept = [record for record in _parse_lines(self.path) if record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record, allow_nan=True) + "\n" for record in kept))

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
