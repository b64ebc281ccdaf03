"""Windowed shared-key attention on one GPU: flex (compiled) against the float64 spec, and its time against the
chunked backend and SDPA with a dense boolean mask.

    PYTHONPATH=src python benchmarks/gpu/window_attn.py --json out.json          # the SW-SKA shape, on CUDA
    PYTHONPATH=src python benchmarks/gpu/window_attn.py --small                  # CPU smoke test of this script

Errors are ||out - ref|| / ||ref|| with ref the float64 spec on the same (upcast) inputs, fresh inputs per check.
Times are medians of CUDA-event timings after warm-up, in milliseconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

import torch

try:
    from slimkv.ops.window_attn import window_attention, window_attention_reference
except ImportError as error:
    # the package __init__ pulls in the models; this benchmark needs the ops alone
    print(f"note: import slimkv failed ({error}); loading slimkv.ops only", file=sys.stderr)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src", "slimkv")
    sys.modules.pop("slimkv", None)
    package = types.ModuleType("slimkv")
    package.__path__ = [os.path.abspath(src)]
    sys.modules["slimkv"] = package
    from slimkv.ops.window_attn import window_attention, window_attention_reference


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.double()
    if torch.isnan(out).any():
        return float("nan")
    return ((out - ref).norm() / ref.norm()).item()


def make_inputs(B, T, H, Hk, D, dtype, device, seed, requires_grad=False):
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = [
        torch.randn(B, T, H, D, generator=gen, device=device, dtype=dtype),
        torch.randn(B, T, Hk, D, generator=gen, device=device, dtype=dtype),
        torch.randn(B, T, H, D, generator=gen, device=device, dtype=dtype),
    ]
    return [t.requires_grad_(requires_grad) for t in tensors]


def median_ms(fn, device, warmup=3, reps=15) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


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


def guarded(label, fn, results):
    """Run one check or timing; a failure is printed and recorded so the other variants still run."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001 (report and go on: one GPU call must yield every number it can)
        message = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        print(f"FAILED {label}: {message}")
        results.append({"label": label, "error": message})


def check(args, device, results):
    for dtype in (torch.bfloat16, torch.float32):
        guarded(f"check {dtype}", lambda: check_dtype(args, device, dtype, results), results)
    guarded("check padded", lambda: check_padded(args, device, results), results)


def check_dtype(args, device, dtype, results):
    B, T, H, Hk, D, W = args.batch, args.length, args.heads, 1, args.head_dim, args.window
    name = str(dtype).removeprefix("torch.")
    # flex has no backward on CPU: the smoke test checks the forward there
    with_grad = device.type == "cuda"
    q, k, v = make_inputs(B, T, H, Hk, D, dtype, device, seed=len(results) + 1, requires_grad=with_grad)
    out = window_attention(q, k, v, W, backend=args.backend)
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
    del ref, ref_grads, leaves
    print(f"check {name:8s} out {row['out']:.2e}  dq {row['dq']:.2e}  dk {row['dk']:.2e}  dv {row['dv']:.2e}")


def check_padded(args, device, results):
    B, T, H, Hk, D, W = args.batch, args.length, args.heads, 1, args.head_dim, args.window
    # left padding, and one sequence with no real token at all: zeros, no NaN
    q, k, v = make_inputs(B, T, H, Hk, D, torch.float32, device, seed=99)
    pad = torch.arange(T, device=device).unsqueeze(0) >= torch.tensor([[T // 3], [T]], device=device)[:B]
    out = window_attention(q, k, v, W, key_padding_mask=pad, backend=args.backend)
    ref = window_attention_reference(q.double(), k.double(), v.double(), W, key_padding_mask=pad)
    row = {"dtype": "float32 padded", "out": relative_error(out, ref), "nan": bool(out.isnan().any())}
    if B > 1:
        row["fully_padded_row_max"] = out[1].abs().max().item()
    results.append(row)
    print(f"check padded   out {row['out']:.2e}  nan {row['nan']}  zero row max {row.get('fully_padded_row_max')}")


def timings(args, device, results):
    B, T, H, D, W = args.batch, args.length, args.heads, args.head_dim, args.window
    variants = {
        args.backend: lambda q, k, v: window_attention(q, k, v, W, backend=args.backend),
        # the shared key copied to every head: shows what the stride-0 broadcast saves (or costs)
        f"{args.backend}_k_copied": lambda q, k, v: window_attention(
            q, k.expand(-1, -1, H, -1).contiguous(), v, W, backend=args.backend
        ),
        "chunked": lambda q, k, v: window_attention(q, k, v, W, backend="chunked", chunk_size=args.chunk),
        "sdpa_mask": lambda q, k, v: sdpa_with_mask(q, k, v, W),
    }
    # causal window: query i sees min(i, W) + 1 keys; two matmuls of 2 * D flops per key
    keys_seen = sum(min(i, W) + 1 for i in range(T))
    flops = 4 * D * B * H * keys_seen
    print(f"useful forward FLOPs {flops:.3e} (backward about 2.5x)")
    for name, fn in variants.items():
        guarded(f"time {name}", lambda: time_variant(name, fn, args, device, flops, results), results)


def time_variant(name, fn, args, device, flops, results):
    B, T, H, D = args.batch, args.length, args.heads, args.head_dim
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
    print(
        f"time {name:16s} fwd {row['fwd_ms']:8.3f} ms   fwd+bwd {row['fwd_bwd_ms']:8.3f} ms   "
        f"fwd {row['fwd_tflops']:6.1f} TFLOP/s   peak {row.get('fwd_bwd_peak_gib', 0):.2f} GiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--backend", default="flex")
    parser.add_argument("--small", action="store_true", help="tiny CPU shapes to smoke-test this script")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.small:
        args.batch, args.length, args.heads, args.head_dim, args.window, args.chunk = 2, 96, 4, 16, 24, 32
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    header = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": dict(B=args.batch, T=args.length, H=args.heads, Hk=1, D=args.head_dim, window=args.window),
    }
    print(json.dumps(header))
    checks, times = [], []
    guarded("check", lambda: check(args, device, checks), checks)
    guarded("timings", lambda: timings(args, device, times), times)
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump({**header, "checks": checks, "times": times}, handle, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
