"""Micro-benchmark of the gla backends: tokens/s forward and forward+backward, gated on agreement with the spec.

legend: B batch, T time, H heads, K key dim, V value dim

Backends live in GLA_BACKENDS, a registry of name -> GlaBackend(fn, available). To benchmark a new one (the Triton
kernels, the flash-linear-attention peer) register it from anywhere before calling bench_gla:

    register_gla_backend("fla", lambda q, k, v, g, s: fla_chunk_gla(q, k, v, g, initial_state=s, ...),
                         available=lambda device: device.type == "cuda" and _has("fla"))

Every row also carries the backend's error against the float64 loop spec on the same inputs, so a fast but wrong
backend shows up as such in the JSON.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from slimkv.io import atomic_write, atomic_write_text
from slimkv.ops.gla import gla
from slimkv.ops.gla.reference import gla_reference

# (q, k, v, log_decay, initial_state) -> (o, final_state)
GlaFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple]


@dataclass
class GlaBackend:
    fn: GlaFn
    available: Callable[[torch.device], bool] = lambda device: True
    # the loop spec's backward is a T-step autograd graph (minutes at T = 2048): longer runs are skipped, not timed
    max_backward_steps: int | None = None
    note: str = ""


def _triton_available(device: torch.device) -> bool:
    from slimkv.ops.dispatch import gpu_path_available

    return gpu_path_available(device, "slimkv.ops.gla.triton")


GLA_BACKENDS: dict[str, GlaBackend] = {
    "reference": GlaBackend(
        lambda q, k, v, g, s: gla(q, k, v, g, initial_state=s, output_final_state=True, backend="reference"),
        max_backward_steps=512,
        note="loop over T (the spec)",
    ),
    "chunked": GlaBackend(
        lambda q, k, v, g, s: gla(q, k, v, g, initial_state=s, output_final_state=True, backend="chunked"),
        note="chunk 64, sub-chunk 16",
    ),
    "chunked16": GlaBackend(
        lambda q, k, v, g, s: gla(q, k, v, g, initial_state=s, output_final_state=True, backend="chunked",
                                  chunk_size=16),
        note="chunk 16 (no cross-sub-chunk part)",
    ),
    "triton": GlaBackend(
        lambda q, k, v, g, s: gla(q, k, v, g, initial_state=s, output_final_state=True, backend="triton"),
        available=_triton_available,
        note="slimkv Triton kernels",
    ),
}


def register_gla_backend(name: str, fn: GlaFn, available: Callable[[torch.device], bool] = lambda device: True,
                         max_backward_steps: int | None = None, note: str = "") -> None:
    """Add (or replace) a backend in the registry that bench_gla draws from."""
    GLA_BACKENDS[name] = GlaBackend(fn, available, max_backward_steps, note)


@dataclass(frozen=True)
class GlaShape:
    B: int
    T: int
    H: int
    K: int
    V: int
    per_head: bool = False
    # log-decays 15x a gate's (mean ~ -3 per step): every sub-chunk takes chunked's exact [c, c, K] path
    strong_decay: bool = False
    label: str = field(default="", compare=False)

    def name(self) -> str:
        decay = ("head" if self.per_head else "chan") + (" strong" if self.strong_decay else "")
        return self.label or f"B{self.B} T{self.T} H{self.H} K{self.K} V{self.V} {decay}"


SHAPE_SETS: dict[str, list[GlaShape]] = {
    # CPU-sized: a couple of minutes for all backends on 2 cores
    "small": [
        GlaShape(2, 512, 4, 64, 128),
        GlaShape(2, 2048, 4, 64, 128),
        GlaShape(2, 512, 1, 64, 256),
        GlaShape(2, 2048, 1, 64, 256),
        GlaShape(2, 2048, 4, 64, 128, per_head=True),
        GlaShape(2, 2048, 4, 64, 128, strong_decay=True),
    ],
    # Rodimus DDTS: one head, K = mem_size 64, V = d_inner = 2 d (d = 512 debug-sized, d = 2048 for the 1.6B)
    "rodimus": [
        GlaShape(1, 2048, 1, 64, 1024, label="rodimus d=512 T2048"),
        GlaShape(1, 2048, 1, 64, 4096, label="rodimus d=2048 T2048"),
    ],
    # Mamba2-130m-like SSD: per-head decay, 24 heads, K = d_state 128, V = headdim 64
    "mamba2": [
        GlaShape(1, 2048, 24, 128, 64, per_head=True, label="mamba2 H24 T2048"),
    ],
}


def _inputs(shape: GlaShape, device: torch.device, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = shape.B, shape.T, shape.H, shape.K, shape.V

    def rand(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    q, k = rand(B, T, H, K) * K**-0.5, rand(B, T, H, K)
    v = rand(B, T, H, V)
    # a gate's log-sigmoid: decays from ~exp(-4) to ~1 per step
    g = torch.nn.functional.logsigmoid(rand(*((B, T, H) if shape.per_head else (B, T, H, K))).float() + 2)
    g = (g * 15 if shape.strong_decay else g).to(dtype)
    state = torch.randn(B, H, K, V, generator=gen).to(device=device, dtype=torch.float32) * 0.1
    return q, k, v, g, state


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    if device.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000
        return timed

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return timed


def _median_time(fn: Callable[[], None], device: torch.device, repeats: int, slow_s: float) -> tuple[float, int]:
    """Median seconds over `repeats` runs after one warmup; a warmup slower than slow_s is itself the one sample."""
    timed = _timer(device)
    warmup = timed(fn)
    if warmup > slow_s:
        return warmup, 1
    return statistics.median(timed(fn) for _ in range(repeats)), repeats


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: a norm-wise relative error that ignores near-zero entries' noise."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def bench_gla(
    device: str | torch.device = "cpu",
    shapes: list[GlaShape] | str = "small",
    backends: list[str] | None = None,
    dtypes: list[torch.dtype] | None = None,
    repeats: int = 3,
    slow_s: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time every (shape, dtype, available backend) forward (no grad) and forward+backward.

    Returns one dict per (shape, dtype, backend, mode) with seconds (median), tokens_per_s (B * T / seconds),
    and o_rel_err / state_rel_err against the float64 loop spec on the same inputs (forward rows).
    Unavailable backends are left out; skipped runs have seconds None and a reason in `skipped`.
    """
    device = torch.device(device)
    shapes = SHAPE_SETS[shapes] if isinstance(shapes, str) else shapes
    dtypes = dtypes or [torch.float32]
    names = list(GLA_BACKENDS) if backends is None else backends
    unknown = [name for name in names if name not in GLA_BACKENDS]
    if unknown:
        raise ValueError(f"bench: unknown gla backend(s) {unknown}; registered: {list(GLA_BACKENDS)}")
    names = [name for name in names if GLA_BACKENDS[name].available(device)]
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            q, k, v, g, state = _inputs(shape, device, dtype)
            q64, k64, v64, g64, state64 = (x.double() for x in (q, k, v, g, state))
            o_spec, s_spec = gla_reference(q64, k64, v64, g64, None, state64, True)
            for name in names:
                backend = GLA_BACKENDS[name]
                base = {"backend": name, "device": device.type, "shape": shape.name(), "B": shape.B, "T": shape.T,
                        "H": shape.H, "K": shape.K, "V": shape.V, "per_head": shape.per_head, "dtype": str(dtype).split(".")[-1]}
                if progress:
                    progress(f"{name} {shape.name()} {base['dtype']}")
                with torch.no_grad():
                    o, s = backend.fn(q, k, v, g, state)
                    seconds, runs = _median_time(lambda: backend.fn(q, k, v, g, state), device, repeats, slow_s)
                rows.append({**base, "mode": "forward", "seconds": seconds, "runs": runs,
                             "tokens_per_s": shape.B * shape.T / seconds,
                             "o_rel_err": _relative_error(o, o_spec), "state_rel_err": _relative_error(s, s_spec)})

                if backend.max_backward_steps is not None and shape.T > backend.max_backward_steps:
                    rows.append({**base, "mode": "forward+backward", "seconds": None, "runs": 0, "tokens_per_s": None,
                                 "skipped": f"T > {backend.max_backward_steps} steps for this backend's backward"})
                    continue
                leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, state)]

                def forward_backward():
                    o, s = backend.fn(*leaves)
                    (o.float().sum() + s.sum()).backward()
                    for leaf in leaves:
                        leaf.grad = None

                seconds, runs = _median_time(forward_backward, device, repeats, slow_s)
                rows.append({**base, "mode": "forward+backward", "seconds": seconds, "runs": runs,
                             "tokens_per_s": shape.B * shape.T / seconds})
    return rows


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(device: str | torch.device = "cpu") -> dict:
    """What a reader needs to compare two result files: versions, hardware, threads, load, commit, date."""
    from importlib import metadata

    device = torch.device(device)
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # other jobs on a shared machine slow every backend alike; the load says how much to trust absolute numbers
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(results: list[dict], json_path: str | Path | None, png_path: str | Path | None,
                  header: dict | None = None) -> None:
    """JSON {"header", "results"} and a PNG: tokens/s per backend for each shape, forward and forward+backward."""
    header = header if header is not None else machine_header(results[0].get("device", "cpu") if results else "cpu")
    if json_path is not None:
        payload = json.dumps({"header": header, "results": results}, indent=1)
        atomic_write_text(json_path, payload + "\n")
    if png_path is not None:
        atomic_write(png_path, lambda handle: _plot(results, header, handle))


def _plot(results: list[dict], header: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["forward", "forward+backward"]
    def label_of(row: dict) -> str:
        return f"{row['shape']}\n{row['dtype']}".replace(" K", "\nK", 1)

    labels = list(dict.fromkeys(label_of(r) for r in results))
    backends = list(dict.fromkeys(r["backend"] for r in results))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.9 * len(labels)), 8.5))
    width = 0.8 / max(len(backends), 1)
    for ax, mode in zip(axes, modes):
        for b_index, backend in enumerate(backends):
            rows = {label_of(r): r for r in results if r["backend"] == backend and r["mode"] == mode}
            xs = [i + (b_index - (len(backends) - 1) / 2) * width for i in range(len(labels))]
            heights = [(rows.get(label) or {}).get("tokens_per_s") or 0 for label in labels]
            bars = ax.bar(xs, heights, width, label=backend)
            for bar, label in zip(bars, labels):
                row = rows.get(label)
                if row is not None and row.get("tokens_per_s") is None:
                    ax.text(bar.get_x() + bar.get_width() / 2, 0.02, "skipped", rotation=90, ha="center",
                            va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        ax.set_title(mode)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in axes:
        ax.set_ylabel("tokens / s (higher is better)")
    axes[0].legend(fontsize=8)
    commit = (header.get("git_commit") or "?")[:10]
    fig.suptitle(f"gla backends on {header.get('device_name')}, threads={header.get('threads')}, "
                 f"load={header.get('load_average_1m')}, torch {header.get('torch')}, {commit}, {header.get('date')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
