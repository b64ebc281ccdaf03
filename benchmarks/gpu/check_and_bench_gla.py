"""Check and time the gated-linear-attention kernels on one GPU; JSON + PNG into --out (default $OUT).

    PYTHONPATH=src python3 benchmarks/gpu/check_and_bench_gla.py --out benchmarks/results [--tune]

flash-linear-attention 0.6.0 (the peer) is used when importable; carry it as wheels (docs/kernels.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from slimkv.bench import gpu_ops  # noqa: E402


def summary(report: dict) -> None:
    rows = report.get("timings", [])
    print("\n| shape | mode | triton ms | chunked ms | fla ms | floor ms | fla / triton |")
    print("|---|---|---|---|---|---|---|")
    keys = []
    for r in rows:
        key = (gpu_ops.Shape(**r["shape"]).label(), r["mode"])
        if key not in keys:
            keys.append(key)
    for label, mode in keys:
        by = {r["backend"]: r for r in rows if gpu_ops.Shape(**r["shape"]).label() == label and r["mode"] == mode}
        ms = {b: (by[b].get("ms") if b in by else None) for b in ("triton", "chunked", "fla")}
        floor = next(iter(by.values()))["floor_ms"]
        ratio = f"{ms['fla'] / ms['triton']:.2f}" if ms["fla"] and ms["triton"] else "-"
        cells = [f"{ms[b]:.3f}" if ms[b] else "-" for b in ("triton", "chunked", "fla")]
        print(f"| {label} | {mode} | " + " | ".join(cells) + f" | {floor:.3f} | {ratio} |")
    checks = report.get("checks", [])
    if checks:
        failed = [c for c in checks if not c["passed"]]
        print(f"\nchecks: {len(checks) - len(failed)}/{len(checks)} passed")
        for c in failed:
            print("FAILED:", c["backend"], c["dtype"], gpu_ops.Shape(**c["shape"]).label(), c["errors"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--no-timings", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--tune", action="store_true", help="sweep launch parameters at the target shape first")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are cut short")
    parser.add_argument("--target-only", action="store_true", help="time only B8 T2048 K64 V4096")
    args = parser.parse_args()
    shapes = [gpu_ops.TARGET] if args.target_only else gpu_ops.TIMING_SHAPES
    report = gpu_ops.run(args.out, checks=not args.no_checks, timings=not args.no_timings,
                         tuning=args.tune, profile=not args.no_profile, shapes=shapes,
                         log=lambda s, t0=time.time(): print(f"[{time.time() - t0:5.0f}s] {s}", flush=True), budget_s=args.budget)
    summary(report)
    checks = report.get("checks", [])
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
