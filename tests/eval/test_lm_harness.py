"""lm-evaluation-harness on CPU, offline: the bundled tasks built from real held-out text, `--model slimkv` (Python
API and CLI), `--model hf` with trust_remote_code in a fresh process that never imported slimkv, and the
remote-code shim for slimkv and RecurFormer folders."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from slimkv.eval.lm_harness import (MC_TASK, PPL_TASK, continuation_items, perplexity_pieces, split_sentences,
                                    write_tasks)
from slimkv.eval.perplexity import encode_text, token_nll
from slimkv.hub import add_remote_code

from .conftest import tiny_model


def test_split_sentences():
    text = 'He left.  "Why?" she asked. Then\nhe came back! It was 3.5 miles. (Really.) Yes'
    assert split_sentences(text) == ['He left.', '"Why?" she asked.', "Then he came back!", "It was 3.5 miles.",
                                     "(Really.)", "Yes"]


def test_perplexity_pieces_cut_at_paragraphs_and_keep_all_text():
    docs = ["a" * 50 + "\n\n" + "b" * 30 + "\n\n" + "c" * 80, "d" * 10]
    pieces = perplexity_pieces(docs, max_chars=90)
    assert pieces == ["a" * 50 + "\n\n" + "b" * 30, "c" * 80, "d" * 10]
    assert perplexity_pieces(docs, max_chars=90, max_pieces=2) == pieces[:2]


def test_continuation_items_come_from_the_text(brown_documents):
    items = continuation_items(brown_documents, num_items=60, seed=3)
    assert len(items) >= 55 and items == continuation_items(brown_documents, num_items=60, seed=3)
    labels = [item["label"] for item in items]
    assert set(labels) == {0, 1, 2, 3}
    flat = [" ".join(doc.split()) for doc in brown_documents]
    for item in items:
        answer = item["choices"][item["label"]]
        # the passage and its true next sentence are consecutive in their own document
        assert f"{item['context']} {answer}" in flat[item["doc"]]
        assert len(set(item["choices"])) == 4
        for k, choice in enumerate(item["choices"]):
            words = len(choice.split())
            assert abs(words - len(answer.split())) <= max(2, 0.3 * len(answer.split()))
            if k != item["label"]:
                assert choice not in flat[item["doc"]]


@pytest.fixture(scope="module")
def harness_setup(tmp_path_factory, brown_data, brown_documents):
    """A tiny Rodimus+ folder (with tokenizer and remote-code shim) and the two tasks over Brown's held-out genres."""
    root = tmp_path_factory.mktemp("harness")
    model = tiny_model("rodimus_plus", brown_data.vocab_size, max_positions=512)
    folder = root / "model"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((brown_data.tokenizer_path.parent / name).read_bytes())
    add_remote_code(folder)
    # short pieces (one window each), so lm-eval's rolling loglikelihood is one forward like token_nll below
    write_tasks(root / "tasks", brown_documents, source="brown held-out", max_chars=600, max_pieces=6, mc_items=8)
    return root, folder, model


def _our_bits_per_byte(model, tokenizer, pieces):
    nll = sum(token_nll(model, encode_text(tokenizer, p, tokenizer.eos_token_id), seq_len=512)[0] for p in pieces)
    return nll / (math.log(2) * sum(len(p.encode("utf-8")) for p in pieces))


def test_python_api_with_the_registered_slimkv_model(harness_setup, brown_tokenizer):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import slimkv.eval.lm_model  # noqa: F401  (registers --model slimkv)

    root, folder, model = harness_setup
    results = lm_eval.simple_evaluate(model="slimkv", model_args=f"pretrained={folder}", tasks=[PPL_TASK, MC_TASK],
                                      task_manager=TaskManager(include_path=str(root / "tasks")), device="cpu",
                                      batch_size=4)
    ppl, mc = results["results"][PPL_TASK], results["results"][MC_TASK]
    pieces = [json.loads(line)["text"] for line in (root / "tasks" / f"{PPL_TASK}.jsonl").read_text().splitlines()]
    assert len(pieces) == 6 and results["n-samples"][PPL_TASK]["effective"] == 6
    # lm-eval's number is slimkv's own perplexity code's number on the same texts
    assert ppl["bits_per_byte,none"] == pytest.approx(_our_bits_per_byte(model, brown_tokenizer, pieces), rel=1e-4)
    assert 0.0 <= mc["acc,none"] <= 1.0 and results["n-samples"][MC_TASK]["effective"] == 8


def test_cli_with_model_slimkv(harness_setup, tmp_path):
    """`python -m slimkv.eval.lm_model ...` is lm-eval's own CLI with `slimkv` registered (lm-eval 0.4.13)."""
    root, folder, _ = harness_setup
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    run = subprocess.run([sys.executable, "-m", "slimkv.eval.lm_model", "--model", "slimkv", "--model_args",
                          f"pretrained={folder}", "--include_path", str(root / "tasks"), "--tasks", MC_TASK,
                          "--device", "cpu", "--batch_size", "4", "--limit", "4", "--output_path", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"|{MC_TASK}" in run.stdout and "acc" in run.stdout


def test_cli_with_model_hf_needs_no_slimkv_import(harness_setup, tmp_path):
    root, folder, model = harness_setup
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "HF_MODULES_CACHE": str(tmp_path / "mods")}
    # the lm_eval console script installed beside this interpreter
    lm_eval_script = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    run = subprocess.run([lm_eval_script, "--model", "hf", "--model_args", f"pretrained={folder},trust_remote_code=True",
                          "--include_path", str(root / "tasks"), "--tasks", f"{PPL_TASK},{MC_TASK}", "--device", "cpu",
                          "--batch_size", "4", "--output_path", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (result_file,) = out.rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]
    assert set(results) == {PPL_TASK, MC_TASK}
    # same model, same number as the in-process slimkv path
    pieces = [json.loads(line)["text"] for line in (root / "tasks" / f"{PPL_TASK}.jsonl").read_text().splitlines()]
    from slimkv.data import load_tokenizer

    ours = _our_bits_per_byte(model, load_tokenizer(folder), pieces)
    assert results[PPL_TASK]["bits_per_byte,none"] == pytest.approx(ours, rel=1e-4)


LOAD_WITHOUT_SLIMKV = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, sys.argv[3])
print(type(model).__name__)
"""


def _load_in_fresh_process(folder, tmp_path, ids):
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "mods")}
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_SLIMKV, str(folder), str(tmp_path / "ids.pt"),
                          str(tmp_path / "logits.pt")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip(), torch.load(tmp_path / "logits.pt")


def test_remote_code_shim_for_a_recurformer_folder(tmp_path):
    from slimkv.recurformer.convert import build_converted

    from tests.recurformer.conftest import tiny_source

    model = build_converted(tiny_source("qwen2"), [[1], [0]], "ddts", mixer_kwargs={}).eval()
    model.save_pretrained(tmp_path / "rf")
    shim = add_remote_code(tmp_path / "rf")
    config = json.loads((tmp_path / "rf" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "slimkv_auto.RecurFormerForCausalLM"
    assert "import RecurFormerForCausalLM" in shim.read_text()
    ids = torch.randint(0, 97, (1, 12))
    name, logits = _load_in_fresh_process(tmp_path / "rf", tmp_path, ids)
    assert name == "RecurFormerForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(logits, model(input_ids=ids).logits)


def test_remote_code_shim_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        add_remote_code(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a slimkv model"):
        add_remote_code(tmp_path)


def test_lm_tasks_cli(tmp_path, capsys, brown_documents):
    from slimkv.cli.main import main

    text = tmp_path / "heldout.txt"
    text.write_text("\n\n\n".join(brown_documents[:6]))
    assert main(["eval", "lm-tasks", "--text", str(text), "--out", str(tmp_path / "tasks"), "--mc-items", "20"]) == 0
    printed = capsys.readouterr().out
    assert "lm_eval --model slimkv" in printed and f"--include_path {tmp_path / 'tasks'}" in printed
    items = (tmp_path / "tasks" / f"{MC_TASK}.jsonl").read_text().splitlines()
    assert len(items) == 20
    yaml_text = (tmp_path / "tasks" / f"{PPL_TASK}.yaml").read_text()
    assert "loglikelihood_rolling" in yaml_text and str(tmp_path / "tasks" / f"{PPL_TASK}.jsonl") in yaml_text


def test_hub_command_prepares_an_existing_folder(tmp_path):
    model = tiny_model("rodimus", vocab_size=40)
    model.save_pretrained(tmp_path / "m")
    run = subprocess.run([sys.executable, "-m", "slimkv.hub", str(tmp_path / "m")], capture_output=True, text=True)
    assert run.returncode == 0 and "slimkv_auto.py" in run.stdout
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "slimkv_auto.RodimusConfig",
                                  "AutoModelForCausalLM": "slimkv_auto.RodimusForCausalLM"}
    ids = torch.randint(0, 40, (1, 9))
    name, logits = _load_in_fresh_process(tmp_path / "m", tmp_path, ids)
    assert name == "RodimusForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(logits, model(input_ids=ids).logits)
    run = subprocess.run([sys.executable, "-m", "slimkv.hub", str(tmp_path / "nowhere")], capture_output=True,
                         text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "no config.json" in run.stderr


def test_model_slimkv_loads_a_recurformer_folder(harness_setup, brown_data, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import slimkv.eval.lm_model  # noqa: F401
    from slimkv.recurformer.convert import build_converted

    from tests.recurformer.conftest import tiny_source

    root, _, _ = harness_setup
    model = build_converted(tiny_source("llama", vocab_size=brown_data.vocab_size), [[1], [0]], "mamba2",
                            mixer_kwargs={}).eval()
    model.save_pretrained(tmp_path / "rf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "rf" / name).write_bytes((brown_data.tokenizer_path.parent / name).read_bytes())
    lm = slimkv.eval.lm_model.SlimkvLM(pretrained=str(tmp_path / "rf"), device="cpu", batch_size=4)
    assert type(lm.model).__name__ == "RecurFormerForCausalLM"
    results = lm_eval.simple_evaluate(model=lm, tasks=[MC_TASK], limit=4,
                                      task_manager=TaskManager(include_path=str(root / "tasks")))
    assert results["n-samples"][MC_TASK]["effective"] == 4
    assert 0.0 <= results["results"][MC_TASK]["acc,none"] <= 1.0
