"""The Quick-start job end to end on a small user file: planned from measured speed, one final evaluation, a report
that says what happened, and an exported folder that plain transformers tooling loads."""
import json
import math
import os

import pytest

from slimkv.mainjob.job import heldout_sample


def test_heldout_sample_is_evenly_spaced_spans():
    tokens = list(range(1000))
    sample = heldout_sample(tokens, 160, pieces=4)
    assert sample.tolist() == list(range(0, 40)) + list(range(320, 360)) + list(range(640, 680)) + \
        list(range(960, 1000))
    assert heldout_sample(tokens, 0).tolist() == tokens and heldout_sample(tokens, 5000).tolist() == tokens


@pytest.mark.slow
def test_main_job_on_a_user_file(tmp_path, capsys):
    from transformers import pipeline

    from slimkv.cli.main import main as slimkv_main

    from ..data.test_user_text import real_text

    (tmp_path / "mine.txt").write_text(real_text(), encoding="utf-8")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = slimkv_main(["main", "--name", "quick", "--minutes", "0.75", "--data.files=mine.txt",
                            "--data.tokenizer_vocab_size=400", "--data.seq_len=32", "--model.hidden_size=64",
                            "--model.window_size=32", "--model.max_position_embeddings=256", "--train.batch_size=4",
                            "--train.micro_batch_size=4", "--log.tensorboard=false"])
        out = capsys.readouterr().out
        assert code == 0 and "held-out perplexity" in out and "of 45 s" in out
        run = tmp_path / "runs" / "quick"
        report = json.loads((run / "report.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    finally:
        os.chdir(here)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "heldout_loss" in r]
    # the plan is what ran: every step logged, the last planned total reached, and the cosine at its minimum there
    assert [r["step"] for r in steps] == list(range(1, report["steps"] + 1))
    assert report["plan"]["final_steps"] == report["steps"] >= 10
    assert report["plan"]["history"][-1]["steps"] == report["steps"]
    # the trainer never evaluates on its own: at most the two progress points, then the job's one final evaluation
    assert len(evals) <= 2 and all(e["step"] < report["steps"] for e in evals)
    assert report["heldout_tokens"] == report["heldout_split_tokens"]
    assert math.isfinite(report["heldout_ppl"]) and report["ppl_ratio_to_unigram"] == pytest.approx(
        report["heldout_ppl"] / report["unigram_ppl"])
    assert set(report["seconds"]) == {"prepare_data", "train", "final_eval", "after"}
    assert report["heldout_split"].startswith("the last 0.1 of the text by bytes")
    assert (run / "loss.png").stat().st_size > 0 and (run / "memory.png").stat().st_size > 0
    text = pipeline("text-generation", model=str(run / "model"))("The", max_new_tokens=4)[0]["generated_text"]
    assert text.startswith("The")


def test_presets_ship_inside_the_package(tmp_path, monkeypatch):
    from pathlib import Path

    import slimkv
    from slimkv.train.config import load_run_config, preset_names, preset_path

    monkeypatch.chdir(tmp_path)
    assert preset_names() == ["1.4b", "130m", "tiny"]
    assert preset_path("tiny") == Path(slimkv.__file__).parent / "configs" / "tiny.yaml"
    assert load_run_config("tiny").model.arch == "rodimus_plus"
    with pytest.raises(FileNotFoundError, match=r"config file 'tinny' does not exist; give a YAML file or a "
                                                r"shipped preset \(1.4b, 130m, tiny\)"):
        load_run_config("tinny")
