"""The results page of `slimkv recurformer experiment` (table + PNG), and `--merge` of parts run side by side,
on a real GPU run's results (docs/recurformer/gpu_smollm2_2026-12-02c: three processes, merged)."""
import json
import shutil
from pathlib import Path

import pytest

from slimkv.cli.main import main
from slimkv.recurformer.experiments import (ExperimentPlan, merge_experiments, plot, scored_commits, table,
                                           write_page)

RUN = Path(__file__).resolve().parents[2] / "docs" / "recurformer" / "gpu_smollm2_2026-12-02c"


def _results(tmp_path: Path) -> dict:
    results = json.loads((RUN / "results.json").read_text())
    results["plan"]["out"] = str(tmp_path)  # no runs/ folder here: no loss curves, no train tokens
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


def _parts(tmp_path: Path) -> list[str]:
    shutil.copytree(RUN / "parts", tmp_path / "parts")
    return [str(tmp_path / "parts" / name) for name in ("rf1", "rf2", "rf3")]


def test_length_column_and_panel_from_the_rows_that_have_a_curve(tmp_path):
    import math

    from slimkv.eval.length import LengthCurve

    results = _results(tmp_path)
    # 64 bins of 128 over 8,192 tokens; loss log(10) in the first eighth, log(20) to the half, log(40) after
    loss = [math.log(10)] * 8 + [math.log(20)] * 24 + [math.log(40)] * 32
    curve = LengthCurve(length=8192, chunk=2048, bin_size=128, sequences=2, loss=loss, trained_length=2048)
    results["rows"]["mamba2"]["length"] = curve.as_dict()
    lines = table(results).splitlines()
    assert "ppl at positions 0-1K/1K-4K/4K-8K" in lines[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert "| 10.00/20.00/40.00 |" in rows["mamba2"]
    assert rows["ddts"].split(" | ")[-2] == "-"  # no curve: a dash, not a made-up value
    from PIL import Image

    plot(results, tmp_path / "with.png")
    del results["rows"]["mamba2"]["length"]
    plot(results, tmp_path / "without.png")
    # the fourth panel widens the figure by a third
    assert Image.open(tmp_path / "with.png").width > 1.25 * Image.open(tmp_path / "without.png").width


def test_merge_reproduces_the_published_table(tmp_path, capsys):
    parts = _parts(tmp_path)
    out = tmp_path / "merged"
    assert main(["recurformer", "experiment", "--merge", ",".join(parts), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert list(merged["rows"]) == ["original", "control", "window", "mamba2", "ddts"]
    # the train-tokens column comes from the copied run records: the same table as the page's
    assert (out / "results.md").read_text() == (RUN / "results.md").read_text()
    assert (out / "results.md").read_text().strip() in capsys.readouterr().out
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "control", "ddts-A", "ddts-B", "mamba2-A", "mamba2-B", "random-A", "window-B"]
    assert len(merged["duplicates"]["original"]) == 3 and len(set(merged["duplicates"]["original"].values())) == 1
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_keeps_the_commit_each_row_was_scored_at(tmp_path):
    parts = _parts(tmp_path)
    # the second part (window, ddts and a duplicate original) as if run a session later, at another commit
    late = Path(parts[1]) / "results.json"
    record = json.loads(late.read_text())
    first_commit = json.loads((Path(parts[0]) / "results.json").read_text())["header"]["git_commit"]
    record["header"]["git_commit"] = "f" * 40
    late.write_text(json.dumps(record))
    merged = merge_experiments(ExperimentPlan(out=str(tmp_path / "m"), merge=tuple(parts)))
    by_row = {name: row["commit"] for name, row in merged["rows"].items()}
    assert by_row == {"original": first_commit, "control": first_commit, "window": "f" * 40,
                      "mamba2": first_commit, "ddts": "f" * 40}
    assert scored_commits(merged) == [first_commit, "f" * 40]
    # a merge of merges keeps the rows' commits, not the first part's header
    again = merge_experiments(ExperimentPlan(out=str(tmp_path / "m2"), merge=(str(tmp_path / "m"),)))
    assert {name: row["commit"] for name, row in again["rows"].items()} == by_row


def test_merge_refuses_other_plans_and_existing_results(tmp_path):
    parts = _parts(tmp_path)
    other = json.loads(Path(parts[1], "results.json").read_text())
    other["plan"]["steps_b"] = 60
    Path(parts[1], "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"ran another plan than .*rf1 \(steps_b: 60 vs 120\)"):
        merge_experiments(ExperimentPlan(out=str(tmp_path / "m"), merge=tuple(parts)))
    # a field the older parts' plans lack (attn_window) counts as its default there: 64 merges, 128 does not
    other["plan"]["steps_b"] = 120
    for window, merges in ((128, False), (64, True)):
        other["plan"]["attn_window"] = window
        Path(parts[1], "results.json").write_text(json.dumps(other))
        if merges:
            merge_experiments(ExperimentPlan(out=str(tmp_path / "m64"), merge=tuple(parts)))
        else:
            with pytest.raises(ValueError, match=r"\(attn_window: 128 vs 64\)"):
                merge_experiments(ExperimentPlan(out=str(tmp_path / "m"), merge=tuple(parts)))
    assert not (tmp_path / "m").exists()  # nothing written
    with pytest.raises(ValueError, match="no results.json in"):
        merge_experiments(ExperimentPlan(out=str(tmp_path / "m"), merge=(str(tmp_path / "nowhere"),)))
    before = (RUN / "results.json").read_bytes()
    with pytest.raises(ValueError, match="already holds results"):
        merge_experiments(ExperimentPlan(out=str(RUN), merge=tuple(parts[:1])))
    assert (RUN / "results.json").read_bytes() == before


def test_merge_compares_a_variant_read_field_only_between_parts_that_ran_a_reader(tmp_path):
    parts = _parts(tmp_path)
    # a fourth part: the learned selection alone, its gates trained 40 steps (the others' plans say 30)
    learned = tmp_path / "parts" / "rf4"
    learned.mkdir()
    record = json.loads(Path(parts[0], "results.json").read_text())
    row = dict(record["rows"]["mamba2"], ppl=41.5)
    record["rows"], record["plan"]["gate_steps"] = {"learned": row}, 40
    (learned / "results.json").write_text(json.dumps(record))
    merged = merge_experiments(ExperimentPlan(out=str(tmp_path / "m"), merge=(*parts, str(learned))))
    assert merged["rows"]["learned"]["ppl"] == 41.5 and merged["plan"]["gate_steps"] == 40
    # a steps field every variant reads is still compared with every part
    record["plan"]["steps_b"] = 60
    (learned / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"rf4 ran another plan than .*rf1 \(steps_b: 60 vs 120\)"):
        merge_experiments(ExperimentPlan(out=str(tmp_path / "m2"), merge=(*parts, str(learned))))
    # two parts that both ran the learned selection must agree on its gate steps
    record["plan"]["steps_b"] = 120
    (learned / "results.json").write_text(json.dumps(record))
    other = tmp_path / "parts" / "rf5"
    shutil.copytree(learned, other)
    record["plan"]["gate_steps"] = 30
    (other / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"rf5 ran another plan than .*rf4 \(gate_steps: 30 vs 40\)"):
        merge_experiments(ExperimentPlan(out=str(tmp_path / "m3"), merge=(*parts, str(learned), str(other))))
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


DOUBLED = RUN.parent / "gpu_smollm2_2026-12-03"  # mamba2 alone on the GPU, merged with a part that scored the rest


def test_a_part_without_the_original_keeps_its_results_and_merges_into_the_page(tmp_path, capsys):
    part = tmp_path / "mamba2"
    shutil.copytree(DOUBLED / "parts" / "mamba2", part)
    results = json.loads((part / "results.json").read_text())
    assert list(results["rows"]) == ["mamba2"]
    # the page compares with the original's row: a part without it writes none (this used to raise, after the
    # part's training and evaluation, on the GPU), and says how to get it
    assert write_page(results, part) is False
    assert not (part / "results.md").exists() and not (part / "results.png").exists()
    other = tmp_path / "rest"
    shutil.copytree(RUN.parent / "gpu_smollm2_2026-12-02d_partial", other)
    out = tmp_path / "merged"
    assert main(["recurformer", "experiment", "--merge", f"{part},{other}", "--out", str(out)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in (out / "results.md").read_text().splitlines()[2:]}
    assert list(rows) == ["original", "control", "mamba2"]
    assert "| +12.8% |" in rows["mamba2"] and "| 47.4% |" in rows["mamba2"]  # 33.54 / 29.73 - 1
    # mamba2's Stage A is the part's own (240 steps feeding its Stage B), not the other part's record
    record = json.loads((out / "runs" / "mamba2-A" / "recurformer.json").read_text())
    assert record == json.loads((part / "runs" / "mamba2-A" / "recurformer.json").read_text())
    assert (out / "results.md").read_text() == (DOUBLED / "results.md").read_text()


def test_lengths_off_the_kibi_grid_keep_their_token_count(tmp_path):
    results = _results(tmp_path)
    for row in results["rows"].values():
        row["niah"]["lengths"] = [256, 1024, 3000]
    assert "| passkey 256/1K/3000 |" in table(results).splitlines()[0]  # not "0K" for 256
