"""What every benchmark shares: the machine header, timers, the error against a spec, one JSON + PNG writer, the
run folder, and promotion of a result into benchmarks/results/.

    header = machine_header(device)                         # real commit, device, versions, load (slimkv/machine.py)
    seconds, runs = median_seconds(fn, device, repeats=3)   # CUDA events on a GPU, perf_counter elsewhere
    err = relative_error(out, ref)                          # ||out - ref|| / ||ref|| (NaN when out has NaN)
    json_path, png_path = write_result(run_folder("ops"), "gla", report, plot=plot_fn)
    promote("runs/bench/ops")                               # -> benchmarks/results/gla_cpu_2026-12-02.{json,png}

Results go to a run folder (`runs/bench/<subject>/` unless --out says otherwise), never into the source tree; a
result worth keeping is promoted with `slimkv bench promote RUN_DIR`, which copies each JSON (and its PNG) to
benchmarks/results/<stem>_<device>_<date>.<ext>, named from the JSON's own header, and refuses a result whose
commit is unknown or dirty (a promoted number must be reproducible from a commit).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import setting
from ..errors import UserError
from ..io import atomic_write, atomic_write_text
from ..machine import device_slug, git_commit, machine_header  # noqa: F401  (re-exported)
from ..eval.speed import sync  # noqa: F401  (re-exported: the benchmarks time with it)

RUNS = Path("runs") / "bench"
RESULTS = Path("benchmarks") / "results"


# ------------------------------------------------------------------------------------------------ where
def run_folder(subject: str, out: str | Path | None = None) -> Path:
    """The folder a benchmark writes into: `out` when given, else runs/bench/<subject>/ (created)."""
    folder = Path(out) if out else RUNS / subject
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Seconds of one call of `fn`: CUDA events on a GPU (queued work included), perf_counter elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def median_seconds(fn: Callable[[], Any], device: torch.device | str, repeats: int = 3, warmup: int = 1,
                   slow_s: float | None = None) -> tuple[float, int]:
    """Median seconds over `repeats` timed calls after `warmup` untimed ones -> (seconds, calls timed).

    With `slow_s`, a first warm-up slower than that is itself the one sample (a loop spec at T = 2048)."""
    for index in range(warmup):
        first = timed(fn, device)
        if index == 0 and slow_s is not None and first > slow_s:
            return first, 1
    return statistics.median(timed(fn, device) for _ in range(repeats)), repeats


# ------------------------------------------------------------------------------------------------ errors
def relative_error(out: torch.Tensor, ref: torch.Tensor, kind: str = "norm") -> float:
    """How far `out` is from the spec's `ref`, in float64: "norm" = ||out - ref|| / ||ref||, "max" = max |out - ref|
    / max |ref| (ignores the noise of near-zero entries). NaN when `out` holds a NaN."""
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    if torch.isnan(out).any():
        return float("nan")
    if kind == "max":
        return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


@contextlib.contextmanager
def nan_filled_empty():
    """torch.empty / empty_like return NaN-filled tensors inside the block, so an output element a kernel never
    writes shows up as NaN in the comparison with the spec."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty, torch.empty_like = empty, empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_empty_like


# ------------------------------------------------------------------------------------------------ writing
def write_json(path: str | Path, report: dict) -> Path:
    """The report as JSON (values JSON does not know become strings), written atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=1, default=str) + "\n")
    return path


def write_png(path: str | Path, figure) -> Path:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
    return path


def write_result(folder: str | Path, stem: str, report: dict, plot: Callable[[dict], Any] | None = None
                 ) -> tuple[Path, Path | None]:
    """<folder>/<stem>.json and, with `plot(report) -> matplotlib Figure`, <folder>/<stem>.png."""
    folder = Path(folder)
    json_path = write_json(folder / f"{stem}.json", report)
    png_path = None
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        png_path = write_png(folder / f"{stem}.png", plot(report))
    return json_path, png_path


# ------------------------------------------------------------------------------------------------ promotion
@dataclass
class PromoteConfig:
    """`slimkv bench promote RUN_DIR`: copy a run folder's results into benchmarks/results/."""

    # a benchmark's run folder (e.g. runs/bench/decode) or one JSON file in it
    run_dir: str = setting(positional=True)
    # where promoted results live
    results_dir: str = setting(str(RESULTS), metavar="DIR")
    # replace a promoted file of the same name
    overwrite: bool = False
    # promote a result measured on a commit with uncommitted changes (its numbers cannot be reproduced exactly)
    allow_dirty: bool = False


def _header_of(report: dict) -> dict:
    for key in ("header", "meta"):
        if isinstance(report.get(key), dict):
            return report[key]
    return {}


def promoted_name(stem: str, header: dict) -> str:
    """<stem>_<device>_<date>: the name benchmarks/results/ uses (decode_h200_2026-12-01)."""
    date = str(header.get("date") or datetime.date.today().isoformat())[:10]
    slug = device_slug(header)
    return f"{stem}_{slug}_{date}" if slug not in stem else f"{stem}_{date}"


def promote(config: PromoteConfig) -> list[Path]:
    """Copy every result JSON of the run folder (and the PNG beside it) into config.results_dir; returns the copies.

    Refused (nothing copied): a JSON without a machine header or commit, a dirty commit (unless allow_dirty), a
    target that exists (unless overwrite)."""
    source = Path(config.run_dir)
    files = [source] if source.is_file() else sorted(source.glob("*.json")) if source.is_dir() else []
    if not files:
        raise UserError(f"{str(source)!r} holds no result JSON to promote")
    plan = []
    for json_path in files:
        try:
            report = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{str(json_path)!r} is not a readable result JSON ({err})") from None
        header = _header_of(report)
        commit = header.get("git_commit") or header.get("commit") or report.get("commit")
        if not header or not commit or commit in ("HEAD", "unknown"):
            raise UserError(f"{str(json_path)!r} names no commit in its header; only results that say what they "
                            "measured can be promoted")
        if (header.get("git_dirty") or str(commit).endswith("-dirty")) and not config.allow_dirty:
            raise UserError(f"{str(json_path)!r} was measured on {commit} (uncommitted changes); commit and run "
                            "again, or pass --allow-dirty")
        name = promoted_name(json_path.stem, header)
        for src in (json_path, json_path.with_suffix(".png")):
            if src.is_file():
                dst = Path(config.results_dir) / f"{name}{src.suffix}"
                if dst.exists() and not config.overwrite:
                    raise UserError(f"{str(dst)!r} exists; pass --overwrite to replace it")
                plan.append((src, dst))
    Path(config.results_dir).mkdir(parents=True, exist_ok=True)
    for src, dst in plan:
        atomic_write(dst, lambda handle, src=src: handle.write(src.read_bytes()))
    return [dst for _, dst in plan]
