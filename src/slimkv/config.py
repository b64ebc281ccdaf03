"""Typed configs for every command: a YAML file and a command line mapped onto nested dataclasses.

    cfg = load_config("configs/tiny.yaml", ["--optim.lr=3e-4", "--model.arch=llama"], schema=RunConfig)
    cfg = config_from_dict(NIAHJobConfig, {"model": "runs/main/model", "lengths": [1024, 2048]})

One schema per command (a dataclass), and one set of rules for all of them:
- every YAML key must name a dataclass field (unknown keys are a ValueError naming the dotted field and the
  closest known one: "did you mean 'optim.lr'?");
- a field without a default must be given (missing ones are a ValueError naming the field);
- values are converted to the field's declared type (int, float, bool, str, Literal, Optional, list[...],
  tuple[...], dict[str, ...] and nested dataclasses); override values are parsed as YAML scalars, except for str
  fields, which take the text as written; floats must be finite (nan and inf are refused);
- a field declared with `ranged(default, ge=..., gt=..., le=..., lt=..., even=...)` is range-checked, the error
  naming the field and the rule;
- a field's documentation is the comment right above it (or `setting(doc=...)`); `iter_fields` and `help_line`
  turn it, the default and the rule into the `--help` text of the command line (slimkv/cli/options.py);
- `config_to_dict` gives plain containers, so a config can be dumped to YAML and stored in checkpoints.

Why hand-written rather than tyro, draccus or OmegaConf: docs/architecture.md, "One config system".
"""
from __future__ import annotations

import ast
import collections.abc
import contextlib
import contextvars
import dataclasses
import difflib
import functools
import inspect
import math
import os
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

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
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            ok = ((self.ge is None or item >= self.ge) and (self.gt is None or item > self.gt)
                  and (self.le is None or item <= self.le) and (self.lt is None or item < self.lt)
                  and (not self.even or item % 2 == 0))
            if not ok:
                raise ValueError(f"{_label(where)} must be {self.describe()}, got {item!r}")


_RANGE_KEYS = ("ge", "gt", "le", "lt", "even", "special")


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, doc: str = "",
            flags: tuple[str, ...] = (), positional: bool = False, parse: Callable[[str], Any] | None = None,
            each: bool = False, allow_empty: bool = False, shown: str | None = None, metavar: str | None = None,
            **rules: Any) -> Any:
    """A dataclass field with what the config system and the command line need to know about it.

    doc: help text (default: the comment above the field). flags: the command-line names, replacing --field-name
    ("--train"; for a bool, a name starting with --no- sets false). positional: a command-line argument without a
    flag. parse: turns a string (from the command line or YAML) into the field's value (e.g. "zoology" into a
    tuple of segments); with each=True it turns each item of a list, and the option repeats (--compare a=1
    --compare b=2). allow_empty: a list option given with no value means the empty list. shown: the default as
    --help prints it. ge/gt/le/lt/even/special: a `Range` checked on every value (each item of a list).
    """
    unknown = set(rules) - set(_RANGE_KEYS)
    if unknown:
        raise TypeError(f"setting() got unknown arguments {sorted(unknown)}")
    metadata: dict[str, Any] = {"doc": doc, "flags": tuple(flags), "positional": positional, "parse": parse,
                                "each": each, "allow_empty": allow_empty, "shown": shown, "metavar": metavar}
    if rules:
        metadata["range"] = Range(**rules)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def ranged(default: Any, **rules: Any) -> Any:
    """A dataclass field with a default and a `Range` (see the module docstring)."""
    return setting(default, **rules)


def check_ranges(config: Any, prefix: str = "") -> None:
    """Check every `ranged` field of a (nested) config dataclass instance; ValueError naming the first bad one."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if "range" in field.metadata:
            field.metadata["range"].check(value, prefix + field.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{field.name}.")


# ------------------------------------------------------------------------------------------------ error wording
# how a field is named in errors: "config field 'optim.lr'" for files and overrides, "--seq-len" on a command line
_LABELS: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar("config_labels", default=None)


def _label(where: str) -> str:
    labels = _LABELS.get()
    return labels(where) if labels is not None else f"config field {where!r}"


@contextlib.contextmanager
def field_labels(labels: Callable[[str], str]) -> Iterator[None]:
    """Name fields with `labels(dotted_path)` in the errors raised inside the block (the CLI: "--seq-len")."""
    token = _LABELS.set(labels)
    try:
        yield
    finally:
        _LABELS.reset(token)


def did_you_mean(name: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """"; did you mean 'optim.lr'?" for the closest known name, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


_did_you_mean = did_you_mean


# ------------------------------------------------------------------------------------------------ field docs
@functools.lru_cache(maxsize=None)
def _comment_docs(cls: type) -> dict[str, str]:
    """Field name -> the comment lines right above it in the class body (joined), read from the source."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    text = source.splitlines()
    docs = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comments = []
            row = node.lineno - 2
            while row >= 0 and text[row].strip().startswith("#"):
                comments.insert(0, text[row].strip().lstrip("#").strip())
                row -= 1
            if comments:
                docs[node.target.id] = " ".join(comments)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> documentation: `setting(doc=...)`, else the comment above the field (dataclasses of any
    module; the comments of a base class count for its fields)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_comment_docs(klass))
    for field in dataclasses.fields(cls):
        if field.metadata.get("doc"):
            docs[field.name] = field.metadata["doc"]
    return docs


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One leaf field of a schema, as the command line and --help see it."""

    path: str
    type: Any
    default: Any
    doc: str
    metadata: typing.Mapping[str, Any]

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def iter_fields(schema: type, prefix: str = "") -> Iterator[FieldInfo]:
    """Every leaf field of `schema`, nested sections walked into ("model.hidden_size"), in declaration order."""
    hints = get_type_hints(schema)
    docs = field_docs(schema)
    for field in dataclasses.fields(schema):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp) and "parse" not in field.metadata:
            yield from iter_fields(tp, f"{prefix}{field.name}.")
            continue
        yield FieldInfo(prefix + field.name, tp, _default_of(field), docs.get(field.name, ""), field.metadata)


def type_name(tp: Any) -> str:
    """What a value of `tp` looks like, for --help: INT, FLOAT, TEXT, {a,b}, INT,..., KEY=VALUE,..."""
    origin = get_origin(tp)
    if tp is bool:
        return "BOOL"
    if tp is int:
        return "INT"
    if tp is float:
        return "FLOAT"
    if tp is str or tp is Any:
        return "TEXT"
    if origin is Literal:
        return "{" + ",".join(map(str, get_args(tp))) + "}"
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return "|".join(type_name(a) for a in members)
    if _is_sequence(origin):
        (item, *_) = get_args(tp) or (Any,)
        return f"{type_name(item)},..."
    if origin is dict:
        return "KEY=VALUE,..."
    return getattr(tp, "__name__", str(tp)).upper()


def show_value(value: Any) -> str:
    """A default as a person writes it on the command line."""
    if isinstance(value, (list, tuple)):
        return ",".join(show_value(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return ",".join(f"{k}={'' if v is None else show_value(v)}" for k, v in value.items()) or "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_line(info: FieldInfo) -> str:
    """The field's doc, default and rule in one line: "model width d (default 256; >= 1)"."""
    parts = []
    if info.required:
        parts.append("required")
    else:
        shown = info.metadata.get("shown")
        parts.append(f"default {shown if shown is not None else show_value(info.default)}")
    if "range" in info.metadata:
        parts.append(info.metadata["range"].describe())
    return (info.doc + " " if info.doc else "") + f"({'; '.join(parts)})"


# ------------------------------------------------------------------------------------------------ conversion
def _is_sequence(origin: Any) -> bool:
    return origin in (list, tuple, typing.Sequence, collections.abc.Sequence)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML-loaded (or command-line) value to the declared type `tp`; `where` is the dotted field name."""
    # a bare container annotation holds anything
    tp = {dict: dict[Any, Any], list: list[Any], tuple: tuple[Any, ...]}.get(tp, tp)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{_label(where)} must be a mapping, got {value!r}")
        return _build(tp, value, where + ".")
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and not isinstance(choice, str) and value == str(choice)):
                return choice
        raise ValueError(f"{_label(where)} must be one of {list(choices)}, got {value!r}"
                         + (did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""))
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{_label(where)} has an invalid value {value!r}")
    if _is_sequence(origin):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{_label(where)} must be a list, got {value!r}")
        (item_type, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{_label(where)} must be a mapping, got {value!r}")
        key_type, value_type = get_args(tp) or (Any, Any)
        return {_convert(k, key_type, where): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"{_label(where)} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ValueError(f"{_label(where)} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ValueError(f"{_label(where)} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ValueError(f"{_label(where)} must be an integer, got {value!r}")
        return int(value) if isinstance(value, int) else int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{_label(where)} must be a number, got {value!r}")
        try:
            # YAML 1.1 reads "3e-4" as a string; float() accepts it
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{_label(where)} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{_label(where)} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"{_label(where)} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} for field {where!r}")


class _RawText(str):
    """An override's value as written, kept beside its YAML reading: str fields take it verbatim."""


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            hint = did_you_mean(str(key), fields, prefix) or f"; known: {', '.join(fields)}"
            raise ValueError(f"unknown config field {prefix + str(key)!r}{hint}")
    kwargs = {}
    for name, field in fields.items():
        where = prefix + name
        if name in data:
            value = data[name]
            if isinstance(value, _Override):
                value = value.raw if _wants_text(hints[name]) else value.parsed
            parse = field.metadata.get("parse")
            try:
                if parse is not None and field.metadata.get("each") and isinstance(value, (list, tuple)):
                    value = [parse(item) if isinstance(item, str) else item for item in value]
                elif parse is not None and isinstance(value, str):
                    value = parse(value)
            except ValueError as err:
                raise ValueError(f"{_label(where)}: {err}") from None
            kwargs[name] = _convert(value, hints[name], where)
            if "range" in field.metadata:
                field.metadata["range"].check(kwargs[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                # a section left out entirely: build it from its own defaults (missing required fields still fail)
                kwargs[name] = _build(hints[name], {}, where + ".")
            else:
                raise ValueError(f"missing required {_label(where)}")
    return cls(**kwargs)


def _wants_text(tp: Any) -> bool:
    """True for str and Optional[str] fields (an override's text is kept as written for them)."""
    if tp is str:
        return True
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return members == [str]
    return False


@dataclasses.dataclass(frozen=True)
class _Override:
    parsed: Any
    raw: str


def _parse_override(text: str) -> tuple[list[str], _Override]:
    if not text.startswith("--") or "=" not in text:
        raise ValueError(f"config override {text!r} must look like --section.field=value")
    key, raw = text[2:].split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"config override {text!r} must look like --section.field=value")
    return key.split("."), _Override(yaml_scalar(raw), raw)


def yaml_scalar(raw: str) -> Any:
    """A command-line value read as YAML ("3.0e-4" -> 3e-4, "[a, b]" -> a list, "true" -> True; YAML 1.1 leaves
    "3e-4" text, which a float field converts); the text itself when it is not valid YAML. Without PyYAML (a bare
    GPU image), numbers, true/false and null are still understood."""
    if raw == "":
        return ""
    try:
        import yaml
    except ImportError:
        words = {"true": True, "false": False, "null": None, "none": None}
        if raw.lower() in words:
            return words[raw.lower()]
        for cast in (int, float):
            try:
                return cast(raw)
            except ValueError:
                pass
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _plain(value: Any) -> Any:
    """Overrides that land inside a dict or Any field (no declared str type) take their YAML reading."""
    if isinstance(value, _Override):
        return value.parsed
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_from_dict(schema: type[T], data: dict, overrides: typing.Sequence[str] = ()) -> T:
    """Build `schema` from plain containers plus `--a.b=value` overrides (see the module docstring)."""
    merged = _deep_copy(data)
    for text in overrides:
        path, value = _parse_override(text)
        leaf = _check_path(schema, path)
        _set_path(merged, path, value if leaf else value.parsed)
    return _build(schema, _settle(schema, merged))


def _settle(schema: type, data: dict) -> dict:
    """Resolve overrides below dataclass fields: a field typed str keeps the text, everything else the YAML."""
    hints = get_type_hints(schema)
    out = {}
    for key, value in data.items():
        tp = hints.get(key)
        if isinstance(value, dict) and tp is not None and dataclasses.is_dataclass(tp):
            out[key] = _settle(tp, value)
        elif isinstance(value, _Override):
            out[key] = value
        else:
            out[key] = _plain(value)
    return out


def _check_path(schema: type, path: list[str]) -> bool:
    """Reject an override naming a field that does not exist, before its value is even looked at.

    Returns True when the path ends at a dataclass field (whose declared type then decides how the text is read)."""
    tp: Any = schema
    for i, part in enumerate(path):
        if get_origin(tp) in (Union, types.UnionType):
            # Optional[Dataclass]: walk into the non-None member
            members = [a for a in get_args(tp) if a is not type(None)]
            tp = members[0] if len(members) == 1 else Any
        if dataclasses.is_dataclass(tp):
            hints = get_type_hints(tp)
            if part not in hints:
                hint = did_you_mean(part, hints, "".join(p + "." for p in path[:i]))
                raise ValueError(f"unknown config field {'.'.join(path[: i + 1])!r}{hint}")
            tp = hints[part]
            if i == len(path) - 1:
                return True
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1] if get_args(tp) else Any
        elif tp is Any:
            return False
        else:
            raise ValueError(f"config field {'.'.join(path[:i])!r} has no sub-field {part!r}")
    return False


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file; one-line errors for a missing file, bad YAML or another shape."""
    import yaml

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
    return data


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = (), *, schema: type[T]) -> T:
    """Load a YAML file onto the dataclass `schema`, then apply `--a.b=value` overrides."""
    return config_from_dict(schema, read_yaml_mapping(path), overrides)


def config_to_dict(config: Any) -> dict:
    """Plain dict/list/scalar form of a config dataclass (YAML- and weights_only-safe)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def dump_config(config: Any, path: str | os.PathLike) -> None:
    """Write the config as YAML, atomically (temp file + os.replace)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    atomic_write_text(path, text)
