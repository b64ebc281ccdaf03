"""The config system (slimkv/config.py): YAML + dotted overrides onto typed dataclasses, one-line errors, field docs
from the comment above each field, and what --help is made of."""
import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from slimkv.config import (config_from_dict, config_to_dict, dump_config, field_docs, field_labels, help_line,
                           iter_fields, load_config, ranged, setting, show_value, type_name, yaml_scalar)


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


# ---------------------------------------------------------------------------------------------------- docs, help
@dataclass
class Documented:
    # model width d
    width: int = ranged(8, ge=1)
    # two lines of comment
    # become one sentence
    depth: int = 2
    undocumented: str = "x"
    explicit: float = setting(0.5, doc="said in the field", gt=0)


def test_field_docs_come_from_the_comment_above_each_field():
    docs = field_docs(Documented)
    assert docs == {"width": "model width d", "depth": "two lines of comment become one sentence",
                    "explicit": "said in the field"}
    infos = {info.path: info for info in iter_fields(Outer)}
    assert set(infos) == {"inner.width", "inner.rate", "inner.names", "inner.table", "inner.mode", "inner.maybe",
                          "flag", "label"}
    assert infos["inner.width"].required and infos["inner.rate"].default == 0.5


def test_help_line_says_doc_default_and_rule():
    infos = {info.path: info for info in iter_fields(Documented)}
    assert help_line(infos["width"]) == "model width d (default 8; >= 1)"
    assert help_line(infos["explicit"]) == "said in the field (default 0.5; > 0)"
    assert type_name(Optional[int]) == "INT" and type_name(Literal["a", "b"]) == "{a,b}"
    assert type_name(tuple[int, ...]) == "INT,..." and show_value((1, 2)) == "1,2" and show_value(True) == "true"


def test_a_str_field_takes_the_override_as_written():
    # YAML would read these as 16 and 1.0; a name is text
    cfg = config_from_dict(Outer, {"inner": {"width": 1}}, ["--label=0x10"])
    assert cfg.label == "0x10"
    cfg = config_from_dict(Outer, {"inner": {"width": 1}}, ["--label=1.0", "--inner.rate=1"])
    assert cfg.label == "1.0" and cfg.inner.rate == 1.0


def test_ranges_check_every_item_of_a_list():
    @dataclass
    class Lengths:
        lengths: tuple[int, ...] = ranged((1, 2), ge=1)

    assert config_from_dict(Lengths, {"lengths": [3, 4]}).lengths == (3, 4)
    with pytest.raises(ValueError, match="'lengths' must be >= 1, got 0"):
        config_from_dict(Lengths, {"lengths": [3, 0]})


def test_parse_hooks_turn_text_into_values():
    @dataclass
    class Parsed:
        pair: tuple[int, int] = setting((1, 2), parse=lambda s: tuple(int(x) for x in s.split("x")))
        items: tuple[dict, ...] = setting((), parse=lambda s: {"k": s}, each=True)

    cfg = config_from_dict(Parsed, {"pair": "3x4", "items": ["a", "b"]})
    assert cfg.pair == (3, 4) and cfg.items == ({"k": "a"}, {"k": "b"})
    with pytest.raises(ValueError, match="config field 'pair': invalid literal"):
        config_from_dict(Parsed, {"pair": "3xq"})


def test_errors_name_fields_as_the_caller_writes_them():
    with field_labels(lambda where: "--" + where.replace("_", "-")):
        with pytest.raises(ValueError, match="^--inner.width must be an integer, got 'wide'$"):
            config_from_dict(Outer, {"inner": {"width": "wide"}})


def test_yaml_scalar_reads_command_line_values():
    assert yaml_scalar("3.0e-4") == 3e-4 and yaml_scalar("[a, b]") == ["a", "b"] and yaml_scalar("true") is True
    assert yaml_scalar("") == "" and yaml_scalar("{unclosed") == "{unclosed"
