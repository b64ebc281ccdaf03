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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from ..config import ranged, setting
from ..ops.gla import gla
from ..ops.gla.reference import gla_reference
from .harness import machine_header, median_seconds, relative_error, run_folder, write_json, write_png
from .kernels import Shape, make_inputs

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
    from ..ops.dispatch import gpu_path_available

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


SHAPE_SETS: dict[str, list[Shape]] = {
    # CPU-sized: a couple of minutes for all backends on 2 cores
    "small": [
        Shape("heads", 2, 512, 4, 64, 128, "channel"),
        Shape("heads", 2, 2048, 4, 64, 128, "channel"),
        Shape("one-head", 2, 512, 1, 64, 256, "channel"),
        Shape("one-head", 2, 2048, 1, 64, 256, "channel"),
        Shape("per-head", 2, 2048, 4, 64, 128, "head"),
        Shape("heads", 2, 2048, 4, 64, 128, "channel", strong_decay=True),
    ],
    # Rodimus DDTS: one head, K = mem_size 64, V = d_inner = 2 d (d = 512 debug-sized, d = 2048 for the 1.6B)
    "rodimus": [
        Shape("rodimus d=512", 1, 2048, 1, 64, 1024, "channel"),
        Shape("rodimus d=2048", 1, 2048, 1, 64, 4096, "channel"),
    ],
    # Mamba2-130m-like SSD: per-head decay, 24 heads, K = d_state 128, V = headdim 64
    "mamba2": [
        Shape("mamba2", 1, 2048, 24, 128, 64, "head"),
    ],
}


def bench_gla(
    device: str | torch.device = "cpu",
    shapes: list[Shape] | str = "small",
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
            q, k, v, g, state = make_inputs(shape, dtype, device, seed=0)
            q64, k64, v64, g64, state64 = (x.double() for x in (q, k, v, g, state))
            o_spec, s_spec = gla_reference(q64, k64, v64, g64, None, state64, True)
            for name in names:
                backend = GLA_BACKENDS[name]
                base = {"backend": name, "device": device.type, "shape": shape.label(), "B": shape.B, "T": shape.T,
                        "H": shape.H, "K": shape.K, "V": shape.V, "per_head": shape.decay == "head",
                        "dtype": str(dtype).split(".")[-1]}
                if progress:
                    progress(f"{name} {shape.label()} {base['dtype']}")
                with torch.no_grad():
                    o, s = backend.fn(q, k, v, g, state)
                    seconds, runs = median_seconds(lambda: backend.fn(q, k, v, g, state), device, repeats, slow_s=slow_s)
                rows.append({**base, "mode": "forward", "seconds": seconds, "runs": runs,
                             "tokens_per_s": shape.B * shape.T / seconds,
                             "o_rel_err": relative_error(o, o_spec, "max"), "state_rel_err": relative_error(s, s_spec, "max")})

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

                seconds, runs = median_seconds(forward_backward, device, repeats, slow_s=slow_s)
                rows.append({**base, "mode": "forward+backward", "seconds": seconds, "runs": runs,
                             "tokens_per_s": shape.B * shape.T / seconds})
    return rows


def write_results(results: list[dict], json_path: str | Path | None, png_path: str | Path | None,
                  header: dict | None = None) -> None:
    """JSON {"header", "results"} and a PNG: tokens/s per backend for each shape, forward and forward+backward."""
    header = header if header is not None else machine_header(results[0].get("device", "cpu") if results else "cpu")
    if json_path is not None:
        write_json(json_path, {"header": header, "results": results})
    if png_path is not None:
        write_png(png_path, plot(results, header))


def plot(results: list[dict], header: dict):
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
    return fig


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class OpsBenchConfig:
    """`slimkv bench ops`: which gla backends, shapes and dtypes to time (`run_ops_bench`)."""

    # auto = cuda when a GPU is visible, else cpu
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # shape set: small (CPU-sized), rodimus, mamba2
    shapes: Literal["small", "rodimus", "mamba2"] = "small"
    # backends to time (none = every one available on the device): reference, chunked, chunked16, triton
    backends: tuple[str, ...] = ()
    dtypes: tuple[Literal["float32", "bfloat16", "float16", "float64"], ...] = ("float32",)
    # timed runs per measurement, after one warmup
    repeats: int = ranged(3, ge=1)
    # torch CPU threads (0 = torch's choice)
    threads: int = ranged(0, ge=0)
    # the run folder for gla.json and gla.png ("" = runs/bench/ops)
    out: str = setting("", metavar="DIR")
    # write the JSON here instead ("" = <out>/gla.json)
    json: str = setting("", metavar="PATH")
    # write the PNG here instead ("" = <out>/gla.png)
    png: str = setting("", metavar="PATH")


def run_ops_bench(config: OpsBenchConfig, progress: Callable[[str], None] | None = None
                  ) -> tuple[list[dict], Path, Path]:
    """Time the chosen backends, write the JSON + PNG -> (rows, json path, png path)."""
    from ..device import resolve_device

    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    names = list(config.backends) or list(GLA_BACKENDS)
    unknown = [name for name in names if name not in GLA_BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(GLA_BACKENDS)}")
    names = [name for name in names if GLA_BACKENDS[name].available(device)]
    if not names:
        raise ValueError(f"none of the chosen backends runs on {device.type}")
    folder = run_folder("ops", config.out or None)
    json_path = Path(config.json) if config.json else folder / "gla.json"
    png_path = Path(config.png) if config.png else folder / "gla.png"
    header = machine_header(device)
    rows = bench_gla(device, SHAPE_SETS[config.shapes], names, [DTYPES[d] for d in config.dtypes], config.repeats,
                     progress=progress)
    write_results(rows, json_path, png_path, header=header)
    return rows, json_path, png_path
