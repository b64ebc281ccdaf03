"""The results page of `slimkv recurformer experiment` (table + PNG) from a real GPU run's results.json."""
import json
from pathlib import Path

from slimkv.recurformer.experiments import plot, table

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "recurformer" / "gpu_smollm2_2026-12-02c.json"


def _results(tmp_path: Path) -> dict:
    results = json.loads(RESULTS.read_text())
    results["plan"]["out"] = str(tmp_path)  # no runs/ folder here: the loss panel stays empty
    return results


def test_table_compares_every_variant_with_the_control(tmp_path):
    lines = table(_results(tmp_path)).splitlines()
    header = lines[0]
    assert "decode ms/token after 8,000 tokens" in header and "passkey 1K/2K/4K" in header
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert list(rows) == ["original", "control", "window", "mamba2", "ddts"]
    assert "| +0.0% |" in rows["control"]
    # 35.86 / 30.31 - 1 and 37.28 / 30.31 - 1, from the rows' own perplexities
    assert "| +18.3% |" in rows["mamba2"] and "| +23.0% |" in rows["ddts"]
    assert "| 47.4% |" in rows["mamba2"] and "| 0.0% |" in rows["original"]


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "results.png"
    plot(_results(tmp_path), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
