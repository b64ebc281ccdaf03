"""`slimkv eval compare`: trained runs scored side by side on the real Brown text (tiny models, CPU)."""
from __future__ import annotations

import json
import math

import yaml

from slimkv.cli.main import main
from slimkv.models.memory import transformer_kv_bytes

from tests.train.helpers import tiny_config_dict


def test_compare_scores_each_run_and_counts_state_bytes(tmp_path, brown_data, capsys):
    runs = []
    for arch in ("rodimus", "llama"):
        config = tiny_config_dict(tmp_path / "runs", arch, arch,
                                  data={"source": "corpus", "data_dir": str(brown_data.data_dir),
                                        "tokenizer_vocab_size": 512, "seq_len": 64},
                                  model={"max_position_embeddings": 512},
                                  train={"steps": 3, "export_model": True, "checkpoint_every": 0})
        path = tmp_path / f"{arch}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["train", str(path), "--quiet"]) == 0
        runs.append(str(tmp_path / "runs" / arch))
    out = tmp_path / "compare"
    code = main(["eval", "compare", *runs, "--niah-lengths", "128,256", "--niah-depths", "0,100",
                 "--ppl-tokens", "1500", "--state-tokens", "8192", "--data-dir", str(brown_data.data_dir),
                 "--device", "cpu", "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    rows = {row["run"]: row for row in report["rows"]}
    assert [rows[a]["arch"] for a in ("rodimus", "llama")] == ["rodimus", "llama"]
    for row in rows.values():
        # 3 steps x 4 sequences x 64 tokens, read back from the run's metrics.jsonl
        assert row["steps"] == 3 and row["tokens"] == 3 * 4 * 64 and row["tokens_per_s"] > 0
        assert 1 < row["heldout_ppl"] < 10 * 512 and math.isfinite(row["heldout_ppl"])
        assert row["trained_length"] == 64 and row["heldout_tokens"] <= 1500
        assert set(row["niah"]) == {"128", "256"} and all(0 <= v <= 1 for v in row["niah"].values())
        assert (out / row["run"] / "niah.json").is_file()
    # the Transformer's KV cache grows with the tokens (2 layers x 2 KV heads x head dim 16, bf16); Rodimus' is
    # its constant preallocated state
    assert rows["llama"]["state_bytes"] == transformer_kv_bytes(2, 2, 16, 8192, 1, 2)
    assert 0 < rows["rodimus"]["state_bytes"] < rows["llama"]["state_bytes"]
    table = (out / "compare.md").read_text()
    assert "| rodimus | rodimus |" in table and "| llama | llama |" in table and "NIAH 256" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert report["header"]["git_commit"]
    # a folder that is no training run: one line, exit 2
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.jsonl" in err[0]
