"""benchmarks/recurformer_branch_length.py on a tiny converted model: per-position Stage A errors over real held-out
text, the length bands, JSON + PNG."""
import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoTokenizer

from slimkv.data.pretrained import fetch_smollm2
from slimkv.recurformer.convert import build_converted, save_converted
from tests.recurformer.conftest import tiny_source

ROOT = Path(__file__).resolve().parents[2]


def test_branch_length_curve_of_a_zero_output_branch_averages_to_one(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(fetch_smollm2())
    # the real tokenizer's ids index the embedding: the tiny model takes its vocabulary size
    source = tiny_source("llama", vocab_size=len(tokenizer))
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    student = build_converted(source, [[1], [0]], "mamba2", init="zero")
    save_converted(student, tokenizer, tmp_path / "mamba2", {"source": str(tmp_path / "source"), "mixer": "mamba2"})
    out = tmp_path / "length.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recurformer_branch_length.py"),
                          "--student", f"zero={tmp_path / 'mamba2'}", "--length", "64", "--sequences", "2",
                          "--train-length", "16", "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    row = report["results"]["zero"]
    assert list(row["bands"]) == ["0-16", "16-32", "32-64"] and len(row["curve"]) == 64
    # zero output: each position's error is its target's square over the mean square, so the curve averages to 1
    assert abs(sum(row["curve"]) / 64 - 1) < 1e-3
    assert report["teacher"] == str(tmp_path / "source") and report["header"]["git_commit"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
