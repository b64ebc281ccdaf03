"""The command line people read: options generated from each command's config, help with docs and defaults,
--version, one-line errors with did-you-mean, --config files (slimkv/cli/options.py, slimkv/cli/main.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from slimkv.cli.main import main
from slimkv.cli.options import add_config_arguments, config_from_args, set_overrides, split_unknown
from slimkv.config import ranged, setting
from slimkv.errors import UserError


@dataclass
class Toy:
    # where the model is
    model: str = setting(positional=True)
    # tokens per window
    seq_len: int = ranged(512, ge=2)
    lengths: tuple[int, ...] = (1, 2)
    mode: Optional[Literal["fast", "slow"]] = None
    # write nothing
    dry_run: bool = False
    check: bool = setting(True, flags=("--no-check",))
    table: dict[str, Optional[str]] = field(default_factory=lambda: {"a": "x"})
    steps: tuple[str, ...] = setting((), parse=str.upper, each=True, flags=("--step",))


def parse(argv, schema=Toy):
    parser = argparse.ArgumentParser(prog="toy", allow_abbrev=False)
    add_config_arguments(parser, schema)
    args, unknown = parser.parse_known_args(argv)
    set_overrides(args, split_unknown(parser, unknown, overrides=True))
    return config_from_args(args, schema), parser


def test_every_kind_of_field_on_the_command_line():
    cfg, _ = parse(["m", "--seq-len", "64", "--lengths", "3", "4,5", "--mode", "fast", "--dry-run", "--no-check",
                    "--table", "b=y", "c=", "--step", "one", "--step", "two"])
    assert cfg == Toy("m", 64, (3, 4, 5), "fast", True, False, {"a": "x", "b": "y", "c": None}, ("ONE", "TWO"))
    # the field's own spelling works too, and defaults stay where nothing was given
    cfg, _ = parse(["m", "--seq_len=32"])
    assert cfg == Toy("m", 32)


def test_help_lists_docs_defaults_and_rules():
    _, parser = parse(["m"])
    text = parser.format_help()
    assert "tokens per window (default 512; >= 2)" in " ".join(text.split())
    assert "--dry-run, --no-dry-run" in text and "--no-check" in text and "--seq_len" not in text


def test_errors_are_one_line_and_name_the_option():
    with pytest.raises(ValueError, match="^--seq-len must be >= 2, got 1$"):
        parse(["m", "--seq-len", "1"])
    with pytest.raises(ValueError, match="^--mode must be one of \\['fast', 'slow'\\], got 'fats'; did you mean"):
        parse(["m", "--mode", "fats"])
    with pytest.raises(UserError, match="unrecognised option '--seq-lenn'; did you mean '--seq-len'"):
        parse(["m", "--seq-lenn", "3"])
    with pytest.raises(ValueError, match="missing required MODEL"):
        parse([])


def test_a_yaml_file_first_then_the_command_line(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("model: from-file\nseq_len: 128\nlengths: [7, 8]\n")
    cfg, _ = parse(["--config", str(path), "--seq-len", "256"])
    assert (cfg.model, cfg.seq_len, cfg.lengths) == ("from-file", 256, (7, 8))
    path.write_text("sequence_length: 3\n")
    with pytest.raises(ValueError, match="unknown config field 'sequence_length'"):
        parse(["m", "--config", str(path)])


def test_top_level_help_version_and_unknown_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "language models whose inference memory does not grow" in out and "slimkv demo" in out
    for name in ("demo", "main", "fetch", "train", "eval", "generate", "convert", "recurformer", "bench"):
        assert f"    {name}" in out
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("slimkv 0.")
    assert main(["trian"]) == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err


def test_train_help_lists_the_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for needle in ("--model.gla_backend=TEXT", "--optim.lr=FLOAT", "peak learning rate (reached after warmup) "
                   "(default 0.001; > 0)", "--model.layers_by_arch.KEY=INT", "--data.files=", "tiny"):
        assert needle in out, needle


@pytest.mark.parametrize("argv", [["demo"], ["generate"], ["eval", "niah"], ["eval", "mqar"], ["bench", "decode"],
                                  ["fetch"], ["convert"], ["main"], ["eval", "lm-tasks"], ["bench", "promote"]])
def test_every_option_has_help_and_a_default(argv, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = capsys.readouterr().out
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert options, out
    blocks = out.split("\n  --")[1:]
    for block in blocks:
        name = block.split()[0]
        if name.startswith(("help", "config", "json", "verbose", "quiet")):
            continue
        assert "(default" in block or "(required)" in block, f"{argv}: --{name} has no default in its help"


def test_dotted_overrides_get_did_you_mean(tmp_path, capsys):
    code = main(["train", "tiny", "--optim.lr=1e-3", "--optim.wight_decay=0", "--train.out_dir", str(tmp_path)])
    assert code == 2
    assert "did you mean 'optim.weight_decay'?" in capsys.readouterr().err
