"""Typed YAML configs: a YAML file mapped onto nested dataclasses, with dotted command-line overrides.

    cfg = load_config("configs/tiny.yaml", ["--optim.lr=3e-4", "--model.arch=llama"], schema=RunConfig)

Rules:
- every YAML key must name a dataclass field (unknown keys are a ValueError naming the dotted field and the
  closest known one: "did you mean 'optim.lr'?");
- a field without a default must be given (missing ones are a ValueError naming the field);
- override values are parsed as YAML scalars and converted to the field's declared type
  (int, float, bool, str, Literal, Optional, list[...], dict[str, ...] and nested dataclasses);
- floats must be finite (nan and inf are refused);
- a field declared with `ranged(default, ge=..., gt=..., le=..., lt=..., even=...)` is range-checked, the error
  naming the field and the rule;
- `config_to_dict` gives plain containers, so a config can be dumped to YAML and stored in checkpoints.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .io import atomic_write_text

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: bounds (ge/gt/le/lt), evenness, and special values let through as is
    (e.g. `special=(0,)` where 0 means "derive it")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    even: bool = False
    special: tuple = ()

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        parts += ["even"] if self.even else []
        return " and ".join(parts) + "".join(f" (or {v})" for v in self.special)

    def check(self, value: Any, where: str) -> None:
        if value is None or value in self.special or isinstance(value, bool):
            return
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
              and (not self.even or value % 2 == 0))
        if not ok:
            raise ValueError(f"config field {where!r} must be {self.describe()}, got {value!r}")


def ranged(default: Any, **rules: Any) -> Any:
    """A dataclass field with a default and a `Range` (see the module docstring)."""
    return dataclasses.field(default=default, metadata={"range": Range(**rules)})


def check_ranges(config: Any, prefix: str = "") -> None:
    """Check every `ranged` field of a (nested) config dataclass instance; ValueError naming the first bad one."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if "range" in field.metadata:
            field.metadata["range"].check(value, prefix + field.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{field.name}.")


def _did_you_mean(name: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """"; did you mean 'optim.lr'?" for the closest known field name, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML-loaded value to the declared type `tp`; `where` is the dotted field name for errors."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config field {where!r} must be a mapping, got {value!r}")
        return _build(tp, value, where + ".")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ValueError(f"config field {where!r} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"config field {where!r} has an invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field {where!r} must be a list, got {value!r}")
        (item_type, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config field {where!r} must be a mapping, got {value!r}")
        key_type, value_type = get_args(tp) or (Any, Any)
        return {_convert(k, key_type, where): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"config field {where!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ValueError(f"config field {where!r} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ValueError(f"config field {where!r} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ValueError(f"config field {where!r} must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"config field {where!r} must be a number, got {value!r}")
        try:
            # YAML 1.1 reads "3e-4" as a string; float() accepts it
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field {where!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"config field {where!r} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"config field {where!r} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} for field {where!r}")


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = _did_you_mean(str(key), fields, prefix) or f"; known: {', '.join(fields)}"
            raise ValueError(f"unknown config field {prefix + str(key)!r}{hint}")
    kwargs = {}
    for name, field in fields.items():
        where = prefix + name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where)
            if "range" in field.metadata:
                field.metadata["range"].check(kwargs[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                # a section left out entirely: build it from its own defaults (missing required fields still fail)
                kwargs[name] = _build(hints[name], {}, where + ".")
            else:
                raise ValueError(f"missing required config field {where!r}")
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if not text.startswith("--") or "=" not in text:
        raise ValueError(f"config override {text!r} must look like --section.field=value")
    key, raw = text[2:].split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"config override {text!r} must look like --section.field=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def config_from_dict(schema: type[T], data: dict, overrides: typing.Sequence[str] = ()) -> T:
    """Build `schema` from plain containers plus `--a.b=value` overrides (see the module docstring)."""
    merged = _deep_copy(data)
    for text in overrides:
        path, value = _parse_override(text)
        _check_path(schema, path)
        _set_path(merged, path, value)
    return _build(schema, merged)


def _check_path(schema: type, path: list[str]) -> None:
    """Reject an override naming a field that does not exist, before its value is even looked at."""
    tp: Any = schema
    for i, part in enumerate(path):
        if dataclasses.is_dataclass(tp):
            hints = _field_types(tp)
            if part not in hints:
                hint = _did_you_mean(part, hints, "".join(p + "." for p in path[:i]))
                raise ValueError(f"unknown config field {'.'.join(path[: i + 1])!r}{hint}")
            tp = hints[part]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1] if get_args(tp) else Any
        elif get_origin(tp) in (Union, types.UnionType):
            # Optional[Dataclass]: walk into the non-None member
            members = [a for a in get_args(tp) if a is not type(None)]
            tp = members[0] if len(members) == 1 else Any
            if dataclasses.is_dataclass(tp):
                hints = _field_types(tp)
                if part not in hints:
                    hint = _did_you_mean(part, hints, "".join(p + "." for p in path[:i]))
                    raise ValueError(f"unknown config field {'.'.join(path[: i + 1])!r}{hint}")
                tp = hints[part]
        else:
            raise ValueError(f"config field {'.'.join(path[:i])!r} has no sub-field {part!r}")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = (), *, schema: type[T]) -> T:
    """Load a YAML file onto the dataclass `schema`, then apply `--a.b=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    return config_from_dict(schema, data, overrides)


def config_to_dict(config: Any) -> dict:
    """Plain dict/list/scalar form of a config dataclass (YAML- and weights_only-safe)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def dump_config(config: Any, path: str | os.PathLike) -> None:
    """Write the config as YAML, atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    atomic_write_text(path, text)
