"""benchmarks/distill_loss.py runs, and its two ways agree on the loss while the fused one runs fewer flops."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_distill_bench_writes_both_ways(tmp_path):
    out = tmp_path / "distill.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distill_loss.py"), "--tokens", "48", "--width",
                          "16", "--vocab", "300", "--chunk", "16", "--repeats", "1", "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    ways = report["ways"]
    assert abs(ways["separate"]["loss"] - ways["fused"]["loss"]) < 1e-5
    # ten logit-sized matmuls against four: 2 * N * V * d flops each
    assert round(ways["separate"]["gflop"] * 1e9) == 10 * 2 * 48 * 300 * 16
    assert round(ways["fused"]["gflop"] * 1e9) == 4 * 2 * 48 * 300 * 16
    assert report["header"]["git_commit"]
