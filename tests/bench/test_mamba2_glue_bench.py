"""benchmarks/mamba2_glue.py counts the Mamba2 mixer's glue: the fused path launches its Triton kernels (conv + SiLU
and the per-head norm, forward and backward) and the count covers the ops outside the scan."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.triton_support import INTERPRETED

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not INTERPRETED, reason="counts on the CPU, with Triton interpreted")
def test_glue_count_sees_the_fused_kernels(tmp_path):
    out = tmp_path / "glue.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mamba2_glue.py"), "--tokens", "16", "--out",
                          str(out)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["fused_ops"] and report["header"]["git_commit"]
    # conv + SiLU and the norm: one forward and one backward kernel each, at least
    assert report["triton_launches"] >= 4
    # the fused path runs no torch conv and no torch SiLU of its own
    assert not {"convolution", "convolution_backward", "silu", "silu_backward"} & set(report["by_op"])
    assert report["aten_ops"] > 0 and report["mib_written"] > 0
