"""benchmarks/gpu/recurformer_parts.sh wait: what a device call brings back of each part."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "recurformer_parts.sh"

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "tar", "pgrep", "python3")),
                                reason="needs bash, tar, pgrep and python3")


def test_wait_packs_one_small_archive_per_part_and_prints_every_row(tmp_path):
    root = tmp_path / "repo"
    (root / "benchmarks" / "gpu").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "benchmarks" / "gpu" / "recurformer_parts.sh")
    logs, out, part = tmp_path / "logs", tmp_path / "out", tmp_path / "rq-w"
    logs.mkdir(), out.mkdir()
    (logs / "rq-w.log").write_text("training window_mamba2-B: stage B, 80 steps\n")
    row = {"ppl": 43.1379, "niah": {"mean": 1.0}, "hashhop_exact_match": 0.0,
           "cache_bytes": {"4096": {"bfloat16": 27161184}}, "decode": {"ms_per_token": 4.96}, "train": {"losses": [3.6]}}
    part.mkdir()
    (part / "results.json").write_text(json.dumps({"rows": {"window_mamba2": row}}))
    run_dir = part / "runs" / "window_mamba2-B"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 80, "loss": 2.98}\n')
    (run_dir / "recurformer.json").write_text("{}")
    # what made the 2026-12-03 archive too large to come back: the model folders' tokenizer copies and weights
    (run_dir / "model" / "tokenizer.json").write_bytes(b"t" * 100_000)
    (run_dir / "model" / "model.safetensors").write_bytes(b"w" * 100_000)
    (part / "converted").mkdir()
    (part / "converted" / "tokenizer.json").write_bytes(b"t" * 100_000)
    (part / "converted" / "conversion.json").write_text("{}")
    (part / "runs" / "gates" / "model").mkdir(parents=True)
    (part / "runs" / "gates" / "model" / "gates.json").write_text("{}")

    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu" / "recurformer_parts.sh"), "wait", "1", str(part)],
                          capture_output=True, text=True, env={**os.environ, "LOGS": str(logs), "OUT": str(out)})
    assert done.returncode == 0, done.stderr
    assert "parts still running: 0" in done.stdout
    # every row in full in the output (the record that survives if the archive does not come back)
    assert 'window_mamba2 {"ppl":43.138,' in done.stdout and '"bfloat16":27161184' in done.stdout
    assert '"ms_per_token": 4.96' in done.stdout
    with tarfile.open(out / "rq-w.tgz") as archive:
        names = sorted(archive.getnames())
    assert names == ["rq-w.log", "rq-w/converted/conversion.json", "rq-w/results.json",
                     "rq-w/runs/gates/model/gates.json", "rq-w/runs/window_mamba2-B/metrics.jsonl",
                     "rq-w/runs/window_mamba2-B/recurformer.json"]
    assert sorted(p.name for p in out.iterdir()) == ["rq-w.tgz"]
