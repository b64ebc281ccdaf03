"""The benchmark harness: real commit in the header, timers, error vs spec, one writer, run folders, promotion."""
from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from slimkv.bench.harness import (PromoteConfig, machine_header, median_seconds, promote, promoted_name,
                                  relative_error, run_folder, write_result)
from slimkv.cli.main import main
from slimkv.errors import UserError
from slimkv.machine import device_slug, git_commit


def test_commit_comes_from_the_environment_first_then_git(monkeypatch):
    monkeypatch.setenv("SLIMKV_COMMIT", "abc123")
    assert git_commit() == "abc123" and machine_header("cpu")["git_commit"] == "abc123"
    monkeypatch.delenv("SLIMKV_COMMIT")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit() == head and len(head) == 40
    assert machine_header("cpu")["git_dirty"] in (True, False)


def test_header_names_the_device_and_versions():
    header = machine_header("cpu")
    assert header["device"] == "cpu" and header["torch"] == torch.__version__ and header["date"][:2] == "20"
    assert device_slug(header) == "cpu"
    assert device_slug({"device": "cuda", "device_name": "NVIDIA H200"}) == "h200"
    assert device_slug({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}) == "h100"


def test_relative_error_kinds_and_nan():
    ref = torch.tensor([1.0, 2.0, 2.0])
    assert relative_error(ref * 1.5, ref) == pytest.approx(0.5)
    assert relative_error(torch.tensor([1.0, 2.0, 3.0]), ref, "max") == pytest.approx(0.5)
    assert math.isnan(relative_error(torch.tensor([1.0, float("nan"), 2.0]), ref))


def test_median_seconds_counts_the_timed_calls_and_cuts_a_slow_warmup():
    calls = []
    seconds, runs = median_seconds(lambda: calls.append(1), "cpu", repeats=5, warmup=2)
    assert runs == 5 and len(calls) == 7 and seconds >= 0
    calls.clear()
    _, runs = median_seconds(lambda: calls.append(1), "cpu", repeats=5, slow_s=-1.0)
    assert runs == 1 and len(calls) == 1


def test_results_go_to_a_run_folder_not_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_folder("ops") == tmp_path.joinpath("runs", "bench", "ops").relative_to(tmp_path)
    assert run_folder("ops", tmp_path / "elsewhere") == tmp_path / "elsewhere"


def _result(folder, commit, device_name="NVIDIA H200", date="2026-12-02T10:00:00+00:00", dirty=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = {"header": {"git_commit": commit, "git_dirty": dirty, "device": "cuda", "device_name": device_name,
                         "date": date},
              "rows": [1, 2]}
    return write_result(folder, "decode", report, plot=lambda r: plt.figure())


def test_promote_copies_json_and_png_named_by_device_and_date(tmp_path):
    json_path, png_path = _result(tmp_path / "run", "f" * 40)
    assert png_path.read_bytes()[:4] == b"\x89PNG" and json.loads(json_path.read_text())["rows"] == [1, 2]
    results = tmp_path / "results"
    copies = promote(PromoteConfig(str(tmp_path / "run"), results_dir=str(results)))
    assert sorted(p.name for p in copies) == ["decode_h200_2026-12-02.json", "decode_h200_2026-12-02.png"]
    assert (results / "decode_h200_2026-12-02.json").read_bytes() == json_path.read_bytes()
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        promote(PromoteConfig(str(tmp_path / "run"), results_dir=str(results)))
    assert len(promote(PromoteConfig(str(tmp_path / "run"), results_dir=str(results), overwrite=True))) == 2
    assert promoted_name("train_bench", {"device": "cpu", "date": "2026-01-02"}) == "train_bench_cpu_2026-01-02"


@pytest.mark.parametrize("commit, dirty, message", [(None, False, "names no commit"), ("HEAD", False, "names no commit"),
                                                    ("abc", True, "uncommitted changes"),
                                                    ("abc-dirty", None, "uncommitted changes")])
def test_promote_refuses_results_that_cannot_be_reproduced(tmp_path, commit, dirty, message):
    _result(tmp_path / "run", commit, dirty=dirty)
    with pytest.raises(UserError, match=message):
        promote(PromoteConfig(str(tmp_path / "run"), results_dir=str(tmp_path / "results")))
    assert not (tmp_path / "results").exists()


def test_bench_cli_subjects_and_promote(tmp_path, capsys):
    _result(tmp_path / "run", "a" * 40)
    assert main(["bench", "promote", str(tmp_path / "run"), "--results-dir", str(tmp_path / "r")]) == 0
    assert "decode_h200_2026-12-02.json" in capsys.readouterr().out
    assert main(["bench", "decod"]) == 2
    assert "did you mean 'decode'?" in capsys.readouterr().err
    assert main(["bench", "ops", "--backend", "chunked"]) == 2
    assert "did you mean '--backends'?" in capsys.readouterr().err


def test_bench_ops_writes_into_its_run_folder(tmp_path, capsys):
    out = tmp_path / "ops"
    code = main(["bench", "ops", "--device", "cpu", "--backends", "chunked", "--repeats", "1", "--out", str(out),
                 "-q"])
    assert code == 0
    report = json.loads((out / "gla.json").read_text())
    assert report["header"]["git_commit"] and report["header"]["device"] == "cpu"
    rows = [r for r in report["results"] if r["mode"] == "forward"]
    assert len(rows) == 6 and all(r["o_rel_err"] < 1e-4 for r in rows)
    assert (out / "gla.png").read_bytes()[:4] == b"\x89PNG"
