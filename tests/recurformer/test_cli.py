"""Bad input for `slimkv recurformer ...`: one line on stderr, exit code 2."""
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from slimkv.cli.main import main

from .conftest import tiny_source


def _fails(argv, capsys, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pattern in err, err


def test_unsupported_architecture(tmp_path, capsys):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    for action in (["profile"], ["convert", "--out", str(tmp_path / "o"), "--ratio", "0.5"]):
        _fails(["recurformer", *action[:1], "--model", str(tmp_path / "gpt2"), *action[1:]], capsys,
               "unsupported architecture 'gpt2'")


@pytest.mark.parametrize("ratio", ["1.0", "-0.2", "7"])
def test_ratio_outside_unit_interval(tmp_path, capsys, ratio):
    tiny_source("llama").save_pretrained(tmp_path / "m")
    _fails(["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
            "--ratio", ratio], capsys, "--ratio must be in [0, 1)")


def test_single_kv_unit_requires_flag(tmp_path, capsys):
    tiny_source("llama", num_kv_heads=1).save_pretrained(tmp_path / "m")
    _fails(["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
            "--ratio", "0.3"], capsys, "--allow-empty-layers")


def test_missing_model_folder(tmp_path, capsys):
    _fails(["recurformer", "profile", "--model", str(tmp_path / "nothing")], capsys, "config.json missing")


def test_calibration_text_shorter_than_window(tmp_path, capsys):
    from slimkv.data.pretrained import fetch_smollm2

    model = fetch_smollm2()
    capsys.readouterr()  # a first fetch prints download progress; only the command's own error line is checked
    short = tmp_path / "short.txt"
    short.write_text("Too short a text.")
    _fails(["recurformer", "profile", "--model", str(model), "--data", str(short), "--window", "32",
            "--quiet"], capsys, "not more than the window k = 32")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _fails(["recurformer", "profile", "--model", str(model), "--data", str(empty)], capsys, "is empty")


def test_train_refuses_bad_configs_in_one_line(tmp_path, capsys):
    tiny_source("llama").save_pretrained(tmp_path / "m")
    _fails(["recurformer", "train", "smollm2-cpu", f"--recurformer.student={tmp_path / 'm'}"], capsys,
           "no conversion.json")
    _fails(["recurformer", "train", "smollm2-cpu"], capsys, "'recurformer.student' is required")
    _fails(["recurformer", "train", "smollm2-cpu", "--recurformer.stagee=A"], capsys,
           "did you mean 'recurformer.stage'")
    _fails(["recurformer", "train", str(tmp_path / "none.yaml")], capsys, "does not exist")
    _fails(["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--ratio", "0.5",
            "--select", "learned"], capsys, "pass --gates")


def test_profile_writes_table_json_and_png(tmp_path, capsys):
    import json

    folder, text = _tiny_with_tokenizer(tmp_path)
    code = main(["recurformer", "profile", "--model", str(folder), "--data", str(text), "--window", "8",
                 "--windows", "4,8", "--num-sequences", "3", "--seq-len", "48", "--json", str(tmp_path / "p.json"),
                 "--png", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert code == 0 and "layer   1" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["windows"] == [4, 8] and data["num_sequences"] == 3 and data["seq_len"] == 48
    assert len(data["unit_rr"]["8"]) == 2 and len(data["head_rr"]["8"][0]) == 4
    assert all(0.0 < x <= 1.0 for row in data["unit_rr"]["4"] for x in row)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_convert_rule_and_option_mistakes_are_one_line(tmp_path, capsys):
    tiny_source("llama").save_pretrained(tmp_path / "m")
    convert = ["recurformer", "convert", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
    _fails(convert, capsys, "give exactly one of --ratio and --threshold")
    _fails([*convert, "--ratio", "0.5", "--threshold", "0.3"], capsys, "give exactly one of --ratio and --threshold")
    _fails([*convert, "--ratoi", "0.5"], capsys, "did you mean '--ratio'?")
    _fails([*convert, "--ratio", "0.5", "--mixer", "mamab2"], capsys, "did you mean 'mamba2'?")
    _fails([*convert, "--ratio", "0.5", "--init", "attn"], capsys, "--init must be one of ['zero', 'attention']")
    _fails([*convert, "--ratio", "0.5", "--attn-sinks", "-1"], capsys, "--attn-sinks must be >= 0, got -1")
    _fails(["recurformer", "convert", "--out", str(tmp_path / "o"), "--ratio", "0.5"], capsys,
           "missing required --model")
    # dotted overrides belong to train and experiment only
    _fails([*convert, "--ratio", "0.5", "--optim.lr=1"], capsys, "unrecognised option '--optim.lr'")
    assert not (tmp_path / "o").exists()


def test_convert_help_lists_every_field_with_its_help(capsys):
    from slimkv.cli.options import option_names
    from slimkv.config import help_line, iter_fields
    from slimkv.recurformer.convert import RecurFormerConvertConfig

    with pytest.raises(SystemExit) as exit_:
        main(["recurformer", "convert", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    fields = list(iter_fields(RecurFormerConvertConfig))
    assert len(fields) == 19
    for info in fields:
        assert info.doc, f"{info.path} has no comment to be its help"
        assert option_names(info)[0] in out and " ".join(help_line(info).split()) in out, info.path
    for needle in ("--ratio FLOAT fraction of KV units to replace", "(default none; in [0, 1))",
                   "--mixer TEXT", "--init {zero,attention}", "--select {recency,learned,random}",
                   "(default 64; >= 1)", "--config FILE.yaml"):
        assert needle in out, needle


def _tiny_with_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from slimkv.data.pretrained import fetch_smollm2

    folder = tmp_path / "tiny"
    tokenizer = AutoTokenizer.from_pretrained(fetch_smollm2())
    tiny_source("qwen2", vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 30)
    return folder, text


def test_convert_reads_a_yaml_config_and_the_command_line_wins(tmp_path, capsys):
    import json

    folder, text = _tiny_with_tokenizer(tmp_path)
    config = tmp_path / "convert.yaml"
    config.write_text(f"model: {folder}\nout: {tmp_path / 'out'}\nratio: 0.25\nmixer: window\nattn_window: 16\n"
                      f"attn_sinks: 2\nselect: random\nseed: 5\ndata: {text}\nwindow: 4\nnum_sequences: 2\n"
                      "seq_len: 32\n")
    capsys.readouterr()
    assert main(["recurformer", "convert", "--config", str(config), "--ratio", "0.5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("replaced 2/4 KV units with window branches;") and str(tmp_path / "out") in out
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert (record["ratio"], record["mixer"], record["select"], record["seed"], record["window_k"]) == \
        (0.5, "window", "random", 5, 4)
    assert record["mixer_kwargs"] == {"window": 16, "sinks": 2} and record["num_replaced"] == 2
    config.write_text(f"model: {folder}\nout: {tmp_path / 'out2'}\nratoi: 0.5\n")
    _fails(["recurformer", "convert", "--config", str(config)], capsys,
           "unknown config field 'ratoi'; did you mean 'ratio'?")


def test_experiment_plan_comes_from_options_yaml_and_dotted_overrides(tmp_path, monkeypatch, capsys):
    from slimkv.recurformer import experiments

    seen = []
    monkeypatch.setattr(experiments, "run_experiments",
                        lambda plan: seen.append(plan) or {"rows": {"original": {"ppl": 35.2}}})
    monkeypatch.setattr(experiments, "table", lambda results: "the table")
    config = tmp_path / "plan.yaml"
    config.write_text("steps_b: 7\nhashhop: 0\noverrides: ['--optim.weight_decay=0']\n")
    code = main(["recurformer", "experiment", "--config", str(config), "--out", str(tmp_path / "x"),
                 "--variants", "original,window", "--niah-lengths", "512", "1024", "--steps-a", "3",
                 "--optim.lr=1e-4", "--train.log_every", "5"])
    assert code == 0 and capsys.readouterr().out == "the table\n"
    (plan,) = seen
    assert (plan.out, plan.variants, plan.niah_lengths, plan.steps_a, plan.steps_b, plan.hashhop) == \
        (str(tmp_path / "x"), ("original", "window"), (512, 1024), 3, 7, 0)
    assert plan.overrides == ("--optim.weight_decay=0", "--optim.lr=1e-4", "--train.log_every=5")
    # a part without the original (one of several processes on one GPU) has no table: its rows and what to do
    monkeypatch.setattr(experiments, "run_experiments", lambda plan: {"rows": {"mamba2": {"ppl": 33.536}}})
    assert main(["recurformer", "experiment", "--out", str(tmp_path / "m"), "--variants", "mamba2"]) == 0
    assert capsys.readouterr().out == (f"{tmp_path / 'm'}/results.json: mamba2 ppl 33.54 (no table without the "
                                       "original's row: --merge this folder with one that scored it)\n")


def test_experiment_steps_per_variant(tmp_path, monkeypatch):
    """Which runs each variant makes: recurrent branches (window_mamba2 too) get Stage A before Stage B; the window
    baseline and the control only Stage B; the hybrid is opt-in (not in the default plan)."""
    from slimkv.recurformer import experiments

    calls = []
    monkeypatch.setattr(experiments, "_convert", lambda plan, name, source, mixer, *a: calls.append(
        ("convert", name, mixer)) or tmp_path / name)
    monkeypatch.setattr(experiments, "_train", lambda plan, name, student, stage, steps, control=False: calls.append(
        ("train", name, stage, steps)) or tmp_path / name)
    (tmp_path / "profile.json").write_text("{}")
    plan = experiments.ExperimentPlan(out=str(tmp_path), variants=("control", "window", "window_mamba2"),
                                      steps_a=5, steps_b=7)
    assert [v for v, _ in experiments.iter_variants(plan, tmp_path / "source")] == ["control", "window",
                                                                                     "window_mamba2"]
    assert calls == [("train", "control", "B", 7), ("convert", "window", "window"), ("train", "window-B", "B", 7),
                     ("convert", "window_mamba2", "window_mamba2"), ("train", "window_mamba2-A", "A", 5),
                     ("train", "window_mamba2-B", "B", 7)]
    assert "window_mamba2" not in experiments.ExperimentPlan().variants
    assert "window_mamba2" in experiments.VARIANTS


def test_experiment_refuses_bad_plans_before_any_work(tmp_path, capsys):
    out = tmp_path / "x"
    experiment = ["recurformer", "experiment", "--out", str(out)]
    _fails([*experiment, "--variants", "orginal"], capsys, "did you mean 'original'?")
    _fails([*experiment, "--ratio", "1"], capsys, "--ratio must be in [0, 1), got 1")
    _fails([*experiment, "--niah-depths", "0.5,2"], capsys, "--niah-depths must be >= 0 and <= 1, got 2.0")
    _fails([*experiment, "--selection-branch", "windwo"], capsys, "did you mean 'window'?")
    _fails([*experiment, "--optim.lrr=1e-4"], capsys, "did you mean 'optim.lr'?")
    _fails([*experiment, "--preset", str(tmp_path / "none.yaml")], capsys, "does not exist")
    # (the closest name may be the field's own spelling, --steps_b, which is accepted too)
    _fails([*experiment, "--stepsb", "3"], capsys, "did you mean '--steps")
    _fails([*experiment, "--length-context", "8192"], capsys,
           "--length-context 8192 needs at least as many held-out tokens: --eval-tokens is 4096")
    assert not out.exists()


def test_experiment_passes_the_state_size_to_the_branches_that_take_one(tmp_path, monkeypatch):
    """--state-size reaches the conversion of every variant; only the branches with a state size use it."""
    from slimkv.recurformer import convert as convert_module
    from slimkv.recurformer import experiments

    configs = []
    monkeypatch.setattr(convert_module, "convert", lambda config, progress=True: configs.append(config))
    plan = experiments.ExperimentPlan(out=str(tmp_path), state_size=32)
    for mixer in ("window_mamba2", "mamba2", "window", "ddts"):
        experiments._convert(plan, mixer, tmp_path / "source", mixer, "recency", tmp_path / "profile.json", None)
    assert [c.state_size for c in configs] == [32] * 4
    assert [c.mixer_kwargs().get("state_size") for c in configs] == [32, 32, None, 32]
    # unset: the branch's own default (the head dim), not a number of ours
    configs.clear()
    experiments._convert(experiments.ExperimentPlan(out=str(tmp_path)), "m", tmp_path / "source", "mamba2",
                         "recency", tmp_path / "profile.json", None)
    assert "state_size" not in configs[0].mixer_kwargs()
