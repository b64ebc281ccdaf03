import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from slimkv.config import config_from_dict, config_to_dict, dump_config, load_config
from slimkv.train.config import RunConfig, load_run_config


@dataclass
class Inner:
    width: int
    rate: float = 0.5
    names: list[str] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=dict)
    mode: Literal["a", "b"] = "a"
    maybe: Optional[int] = None


@dataclass
class Outer:
    inner: Inner
    flag: bool = False
    label: str = "x"


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_and_overrides_are_type_converted(tmp_path):
    path = write(tmp_path, {"inner": {"width": 3}, "label": "y"})
    cfg = load_config(path, ["--inner.rate=3e-4", "--flag=true", "--inner.names=[p, q]", "--inner.table.k=7",
                             "--inner.mode=b", "--inner.maybe=4", "--label=12"], schema=Outer)
    assert cfg == Outer(Inner(3, 3e-4, ["p", "q"], {"k": 7}, "b", 4), True, "12")
    assert isinstance(cfg.inner.rate, float) and isinstance(cfg.label, str)


def test_float_field_accepts_yaml_1_1_exponent_strings():
    # YAML 1.1 reads "1e-3" (no dot) as a string; the float field still gets a float
    cfg = config_from_dict(Outer, {"inner": {"width": 1, "rate": "1e-3"}})
    assert cfg.inner.rate == 1e-3


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        ({"inner": {"width": 1, "colour": 2}}, [], "unknown config field 'inner.colour'"),
        ({"inner": {"width": 1}}, ["--inner.depth=3"], "unknown config field 'inner.depth'"),
        ({"inner": {}}, [], "missing required config field 'inner.width'"),
        ({"inner": {"width": "wide"}}, [], "config field 'inner.width' must be an integer"),
        ({"inner": {"width": 1.5}}, [], "config field 'inner.width' must be an integer"),
        ({"inner": {"width": 1, "mode": "c"}}, [], "config field 'inner.mode' must be one of ['a', 'b']"),
        ({"inner": {"width": 1}, "flag": "maybe"}, [], "config field 'flag' must be true or false"),
        ({"inner": {"width": 1}}, ["inner.width=3"], "must look like --section.field=value"),
        ({"inner": {"width": 1}}, ["--label.x=3"], "config field 'label' has no sub-field 'x'"),
    ],
)
def test_bad_fields_are_one_line_value_errors(data, overrides, message):
    with pytest.raises(ValueError) as info:
        config_from_dict(Outer, data, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", schema=Outer)
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad, schema=Outer)


def test_dump_round_trips(tmp_path):
    cfg = Outer(Inner(3, 0.25, ["a"], {"k": 1}, "b"), True, "z")
    dump_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml", schema=Outer)
    assert again == cfg
    assert config_to_dict(again) == dataclasses.asdict(cfg)


def test_every_preset_loads_and_is_complete():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert presets, "configs/*.yaml missing"
    for preset in presets:
        cfg = load_run_config(preset)
        assert isinstance(cfg, RunConfig)
        for arch in ("rodimus", "rodimus_plus", "llama"):
            again = load_run_config(preset, [f"--model.arch={arch}"])
            assert again.model.resolved_num_layers() > 0


def test_run_config_cross_field_rules(tmp_path):
    from slimkv.train.config import run_config_from_dict

    with pytest.raises(ValueError, match="'data.seq_len' \\(128\\) exceeds the model's position limit"):
        run_config_from_dict({"model": {"num_hidden_layers": 2, "max_position_embeddings": 64},
                              "data": {"seq_len": 128}})
    with pytest.raises(ValueError, match="'model.layers_by_arch' has no 'llama'"):
        run_config_from_dict({"model": {"arch": "llama", "layers_by_arch": {"rodimus": 2}}})
    with pytest.raises(ValueError, match="'train.batch_size' \\(6\\) must be a multiple"):
        run_config_from_dict({"model": {"num_hidden_layers": 2}, "train": {"batch_size": 6, "micro_batch_size": 4}})
