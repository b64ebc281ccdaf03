"""Typed YAML configs: a YAML file mapped onto nested dataclasses, with dotted command-line overrides.

    cfg = load_config("configs/tiny.yaml", ["--optim.lr=3e-4", "--model.arch=llama"], schema=RunConfig)

Rules:
- every YAML key must name a dataclass field (unknown keys are a ValueError naming the dotted field);
- a field without a default must be given (missing ones are a ValueError naming the field);
- override values are parsed as YAML scalars and converted to the field's declared type
  (int, float, bool, str, Literal, Optional, list[...], dict[str, ...] and nested dataclasses);
- `config_to_dict` gives plain containers, so a config can be dumped to YAML and stored in checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .io import atomic_write_text

T = TypeVar("T")


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
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field {where!r} must be a number, got {value!r}") from None
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
            raise ValueError(f"unknown config field {prefix + str(key)!r}; known: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        where = prefix + name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where)
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
                raise ValueError(f"unknown config field {'.'.join(path[: i + 1])!r}")
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
                    raise ValueError(f"unknown config field {'.'.join(path[: i + 1])!r}")
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
