"""Windowed shared-key attention (SW-SKA's op): the chosen backend against the float64 spec, and its time against the
chunked backend, the same op with the key copied to every head, and SDPA with a dense boolean mask.

    slimkv bench window-attn                     # the SW-SKA shape on CUDA: B2 T4096 H16 D128, window 2048
    slimkv bench window-attn --small             # tiny CPU shapes (a smoke test of this benchmark)

legend: B batch, T time, H query heads, Hk key heads (1: the shared key), D head dim, W window
Errors are ||out - ref|| / ||ref|| with ref the float64 spec on the same (upcast) inputs, fresh inputs per check.
Times are medians of CUDA-event timings after warm-up, in milliseconds. Writes window_attn.json into the run folder.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from ..config import ranged, setting
from ..ops.window_attn import window_attention, window_attention_reference
from .harness import machine_header, median_seconds, relative_error, run_folder, write_json

logger = logging.getLogger(__name__)


@dataclass
class WindowAttnBenchConfig:
    """`slimkv bench window-attn`: the shape and backend of `run_window_attn_bench`."""

    batch: int = ranged(2, ge=1)
    length: int = ranged(4096, ge=2)
    heads: int = ranged(16, ge=1)
    head_dim: int = ranged(128, ge=1)
    # previous tokens each query sees
    window: int = ranged(2048, ge=1)
    # the chunked backend's chunk
    chunk: int = ranged(512, ge=1)
    # the backend checked and timed against the others
    backend: str = "flex"
    # tiny CPU shapes to smoke-test this benchmark (B2 T96 H4 D16, window 24, chunk 32)
    small: bool = False
    # the run folder for window_attn.json ("" = runs/bench/window-attn)
    out: str = setting("", metavar="DIR")
    # write the JSON here instead ("" = <out>/window_attn.json)
    json: str = setting("", metavar="PATH")


def make_inputs(B, T, H, Hk, D, dtype, device, seed, requires_grad=False):
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = [
        torch.randn(B, T, H, D, generator=gen, device=device, dtype=dtype),
        torch.randn(B, T, Hk, D, generator=gen, device=device, dtype=dtype),
        torch.randn(B, T, H, D, generator=gen, device=device, dtype=dtype),
    ]
    return [t.requires_grad_(requires_grad) for t in tensors]


def median_ms(fn, device, warmup=3, reps=15) -> float:
    return 1e3 * median_seconds(fn, device, repeats=reps, warmup=warmup)[0]


def sdpa_with_mask(q, k, v, window):
    """SDPA on [B, H, T, D] with the shared key broadcast to every head and a dense [T, T] boolean mask."""
    T, H = q.shape[1], q.shape[2]
    positions = torch.arange(T, device=q.device)
    offset = positions.view(T, 1) - positions.view(1, T)
    mask = (offset >= 0) & (offset <= window)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.expand(-1, -1, H, -1).transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def guarded(label: str, fn: Callable[[], None], results: list, log: Callable[[str], None]) -> None:
    """Run one check or timing; a failure is logged and recorded so the other variants still run."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001 (report and go on: one GPU call must yield every number it can)
        message = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        log(f"FAILED {label}: {message}")
        results.append({"label": label, "error": message})


def check_dtype(cfg: WindowAttnBenchConfig, device, dtype, results, log) -> None:
    B, T, H, Hk, D, W = cfg.batch, cfg.length, cfg.heads, 1, cfg.head_dim, cfg.window
    name = str(dtype).removeprefix("torch.")
    # flex has no backward on CPU: the smoke test checks the forward there
    with_grad = device.type == "cuda"
    q, k, v = make_inputs(B, T, H, Hk, D, dtype, device, seed=len(results) + 1, requires_grad=with_grad)
    out = window_attention(q, k, v, W, backend=cfg.backend)
    grad_out = torch.randn_like(out)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = window_attention_reference(*leaves, W)
    if with_grad:
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        ref_grads = torch.autograd.grad(ref, leaves, grad_out.double())
    else:
        grads = ref_grads = [ref.new_ones(1)] * 3
    row = {"dtype": name, "out": relative_error(out, ref.detach())}
    row.update({f"d{n}": relative_error(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
    row["nan"] = bool(out.isnan().any() or any(g.isnan().any() for g in grads))
    results.append(row)
    log(f"check {name:8s} out {row['out']:.2e}  dq {row['dq']:.2e}  dk {row['dk']:.2e}  dv {row['dv']:.2e}")


def check_padded(cfg: WindowAttnBenchConfig, device, results, log) -> None:
    B, T, H, Hk, D, W = cfg.batch, cfg.length, cfg.heads, 1, cfg.head_dim, cfg.window
    # left padding, and one sequence with no real token at all: zeros, no NaN
    q, k, v = make_inputs(B, T, H, Hk, D, torch.float32, device, seed=99)
    pad = torch.arange(T, device=device).unsqueeze(0) >= torch.tensor([[T // 3], [T]], device=device)[:B]
    out = window_attention(q, k, v, W, key_padding_mask=pad, backend=cfg.backend)
    ref = window_attention_reference(q.double(), k.double(), v.double(), W, key_padding_mask=pad)
    row = {"dtype": "float32 padded", "out": relative_error(out, ref), "nan": bool(out.isnan().any())}
    if B > 1:
        row["fully_padded_row_max"] = out[1].abs().max().item()
    results.append(row)
    log(f"check padded   out {row['out']:.2e}  nan {row['nan']}  zero row max {row.get('fully_padded_row_max')}")


def time_variant(name, fn, cfg: WindowAttnBenchConfig, device, flops, results, log) -> None:
    B, T, H, D = cfg.batch, cfg.length, cfg.heads, cfg.head_dim
    # flex has no backward on CPU (smoke test only)
    with_grad = device.type == "cuda" or not name.startswith("flex")
    q, k, v = make_inputs(B, T, H, 1, D, torch.bfloat16, device, seed=7, requires_grad=with_grad)
    grad_out = torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16)

    def forward():
        with torch.no_grad():
            fn(q, k, v)

    def forward_backward():
        torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)

    row = {"variant": name, "dtype": "bfloat16", "fwd_ms": median_ms(forward, device)}
    row["fwd_bwd_ms"] = median_ms(forward_backward, device) if with_grad else float("nan")
    row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        row["fwd_bwd_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results.append(row)
    log(f"time {name:16s} fwd {row['fwd_ms']:8.3f} ms   fwd+bwd {row['fwd_bwd_ms']:8.3f} ms   "
        f"fwd {row['fwd_tflops']:6.1f} TFLOP/s   peak {row.get('fwd_bwd_peak_gib', 0):.2f} GiB")


def run_window_attn_bench(cfg: WindowAttnBenchConfig, log: Callable[[str], None] = logger.info
                          ) -> tuple[dict, Path]:
    """Checks (bf16, float32, padded) and timings of every variant -> (report, json path)."""
    if cfg.small:
        cfg = replace(cfg, batch=2, length=96, heads=4, head_dim=16, window=24, chunk=32)
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.small else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    B, T, H, D, W = cfg.batch, cfg.length, cfg.heads, cfg.head_dim, cfg.window
    report = {"header": machine_header(device), "config": asdict(cfg),
              "shape": dict(B=B, T=T, H=H, Hk=1, D=D, window=W), "checks": [], "times": []}
    checks, times = report["checks"], report["times"]
    for dtype in (torch.bfloat16, torch.float32):
        guarded(f"check {dtype}", lambda: check_dtype(cfg, device, dtype, checks, log), checks, log)
    guarded("check padded", lambda: check_padded(cfg, device, checks, log), checks, log)
    variants = {
        cfg.backend: lambda q, k, v: window_attention(q, k, v, W, backend=cfg.backend),
        # the shared key copied to every head: shows what the stride-0 broadcast saves (or costs)
        f"{cfg.backend}_k_copied": lambda q, k, v: window_attention(
            q, k.expand(-1, -1, H, -1).contiguous(), v, W, backend=cfg.backend),
        "chunked": lambda q, k, v: window_attention(q, k, v, W, backend="chunked", chunk_size=cfg.chunk),
        "sdpa_mask": lambda q, k, v: sdpa_with_mask(q, k, v, W),
    }
    # causal window: query i sees min(i, W) + 1 keys; two matmuls of 2 * D flops per key
    flops = 4 * D * B * H * sum(min(i, W) + 1 for i in range(T))
    log(f"useful forward FLOPs {flops:.3e} (backward about 2.5x)")
    for name, fn in variants.items():
        guarded(f"time {name}", lambda: time_variant(name, fn, cfg, device, flops, times, log), times, log)
    path = Path(cfg.json) if cfg.json else run_folder("window-attn", cfg.out or None) / "window_attn.json"
    return report, write_json(path, report)
