"""The command line of every slimkv command, generated from the command's config dataclass (slimkv/config.py).

    def add_arguments(parser):  add_config_arguments(parser, NIAHJobConfig)
    def run(args):              config = config_from_args(args, NIAHJobConfig)

- each top-level field is an option `--field-name VALUE` (also `--field_name`), or the names in `setting(flags=)`;
  its help is the field's comment, default and range; a `positional` field is an argument without a flag;
- a bool is `--flag` / `--no-flag`; a list takes several values or comma-separated ones (`--lengths 1024 2048` is
  `--lengths 1024,2048`); a dict takes KEY=VALUE items, merged over its default;
- nested sections and dict entries are set with `--section.field=value` (listed at the end of --help);
- `--config FILE.yaml` reads values first (keys: the field names); the command line wins;
- a misspelt option is a one-line error naming the closest one ("did you mean '--seq-len'?").
Errors name options as they are written on the command line ("--seq-len must be an integer, got 'x'").
"""
from __future__ import annotations

import argparse
import textwrap
import types
import typing
from typing import Any, Sequence, TypeVar, Union, get_args, get_origin

from ..config import (FieldInfo, config_from_dict, did_you_mean, field_labels, help_line, iter_fields,
                      read_yaml_mapping, type_name)
from ..errors import UserError

T = TypeVar("T")
_PREFIX = "cfg:"
_OVERRIDES = "_config_overrides"


def _kind(tp: Any) -> str:
    """How a field is read from the command line: bool, list, dict or a single value."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _kind(members[0])
    if tp is bool:
        return "bool"
    if origin in (list, tuple, typing.Sequence) or getattr(origin, "__name__", "") == "Sequence":
        return "list"
    if origin is dict:
        return "dict"
    return "value"


def option_names(info: FieldInfo) -> list[str]:
    """The command-line names of a top-level field: `setting(flags=...)`, else --field-name."""
    if info.metadata.get("flags"):
        return list(info.metadata["flags"])
    return ["--" + info.path.replace("_", "-")]


def _help(info: FieldInfo) -> str:
    text = help_line(info)
    if info.metadata.get("positional"):
        text = text.replace(" (required)", "")
    # argparse %-formats help strings
    return text.replace("%", "%%")


def _add(parser: argparse.ArgumentParser, info: FieldInfo, names: list[str], **kwargs) -> None:
    """The option under its names, plus the field's own spelling (--seq_len) as a hidden alias."""
    parser.add_argument(*names, **kwargs)
    alias = "--" + info.path
    if not info.metadata.get("flags") and alias not in names:
        parser.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS})


def add_config_arguments(parser: argparse.ArgumentParser, schema: type, *, config_file: bool = True,
                         skip: Sequence[str] = ()) -> None:
    """Add an option (or argument) for every top-level field of `schema`; nested fields go to the epilog."""
    nested = []
    for info in iter_fields(schema):
        if "." in info.path:
            nested.append(info)
            continue
        if info.path in skip:
            continue
        kind, meta = _kind(info.type), info.metadata
        metavar = meta.get("metavar") or (info.path.upper() if meta.get("positional") else type_name(info.type))
        dest = _PREFIX + info.path
        if meta.get("positional"):
            # optional for argparse even when required: --config FILE may give it, and a missing one is then the
            # config system's one-line error ("missing required MODEL")
            parser.add_argument(dest, metavar=metavar, help=_help(info), nargs="?" if kind != "list" else "*",
                                default=argparse.SUPPRESS)
        elif kind == "bool":
            names = option_names(info)
            if meta.get("flags"):
                for name in names:
                    parser.add_argument(name, dest=dest, action="store_const", const=not name.startswith("--no-"),
                                        default=argparse.SUPPRESS, help=_help(info) if name == names[0] else
                                        argparse.SUPPRESS)
            else:
                _add(parser, info, names, dest=dest, action=argparse.BooleanOptionalAction,
                     default=argparse.SUPPRESS, help=_help(info))
        elif kind == "list" and meta.get("each"):
            _add(parser, info, option_names(info), dest=dest, action="append", metavar=metavar,
                 default=argparse.SUPPRESS, help=_help(info) + " (repeatable)")
        elif kind in ("list", "dict") and meta.get("parse") is None:
            _add(parser, info, option_names(info), dest=dest, nargs="*" if meta.get("allow_empty") else "+",
                 action="extend", metavar=metavar, default=argparse.SUPPRESS, help=_help(info))
        else:
            _add(parser, info, option_names(info), dest=dest, metavar=metavar, default=argparse.SUPPRESS,
                 help=_help(info))
    if config_file:
        parser.add_argument("--config", dest=_PREFIX + "@config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                            help="read the options from a YAML file first (keys are the field names, e.g. "
                                 "seq_len); the command line wins")
    if nested:
        parser.epilog = (parser.epilog + "\n\n" if parser.epilog else "") + fields_epilog(nested)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def fields_epilog(fields: Sequence[FieldInfo] | type, title: str = "config fields (set with "
                  "--section.field=value):") -> str:
    """A --help section listing dotted fields with their docs, defaults and ranges, grouped by section."""
    infos = list(iter_fields(fields)) if isinstance(fields, type) else list(fields)
    lines = [title]
    section = None
    for info in infos:
        head = info.path.split(".")[0] if "." in info.path else ""
        if head != section:
            section = head
            lines.append(f"  {head}:" if head else "")
        if get_origin(info.type) is dict:
            value_type = (get_args(info.type) or (Any, Any))[1]
            lines.append(f"    --{info.path}.KEY={type_name(value_type)}")
        else:
            lines.append(f"    --{info.path}={type_name(info.type)}")
        lines.extend(textwrap.wrap(help_line(info), width=108, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return "\n".join(lines)


def _split_list(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def _dict_items(values: list[str], option: str) -> dict[str, str | None]:
    items = {}
    for value in _split_list(values):
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise UserError(f"{option} takes KEY=VALUE items, got {value!r}")
        items[key] = item if item != "" else None
    return items


def cli_labels(schema: type) -> typing.Callable[[str], str]:
    """Dotted field path -> how errors name it: the option for a top-level field, the field otherwise."""
    names = {info.path: option_names(info)[0] for info in iter_fields(schema) if "." not in info.path}
    positional = {info.path for info in iter_fields(schema) if info.metadata.get("positional")}

    def label(where: str) -> str:
        root = where.split("[")[0]
        if root in positional:
            return root.upper()
        if root in names:
            return names[root] + where[len(root):]
        return f"config field {where!r}"

    return label


def config_from_args(args: argparse.Namespace, schema: type[T], *, base: dict | None = None) -> T:
    """Build `schema` from `--config FILE`, then the options given, then any `--section.field=value` overrides."""
    values = vars(args)
    data: dict[str, Any] = dict(base or {})
    if _PREFIX + "@config" in values:
        data.update(read_yaml_mapping(values[_PREFIX + "@config"]))
    infos = {info.path: info for info in iter_fields(schema) if "." not in info.path}
    for key, value in values.items():
        if not key.startswith(_PREFIX) or key == _PREFIX + "@config":
            continue
        path = key[len(_PREFIX):]
        info = infos[path]
        kind = _kind(info.type)
        if kind == "list" and info.metadata.get("each"):
            value = list(value)
        elif kind == "list" and info.metadata.get("parse") is None:
            value = _split_list(value if isinstance(value, list) else [value])
        elif kind == "dict":
            default = data.get(path, info.default if not info.required else {})
            value = {**(default or {}), **_dict_items(value, option_names(info)[0])}
        data[path] = value
    with field_labels(cli_labels(schema)):
        return config_from_dict(schema, data, getattr(args, _OVERRIDES, ()))


def split_unknown(parser: argparse.ArgumentParser, unknown: Sequence[str], *, overrides: bool) -> list[str]:
    """The `--section.field=value` items among arguments argparse did not know (when `overrides` allows them);
    anything else is a one-line UserError naming the closest known option."""
    kept = []
    known = [name for action in parser._actions for name in action.option_strings]
    items = list(unknown)
    while items:
        item = items.pop(0)
        dotted = item.startswith("--") and "." in item.split("=", 1)[0]
        if overrides and dotted and "=" not in item and items and not items[0].startswith("--"):
            # --section.field VALUE, written like any other option
            item = f"{item}={items.pop(0)}"
        if overrides and dotted and "=" in item:
            kept.append(item)
            continue
        name = item.split("=", 1)[0]
        if name.startswith("-"):
            hint = did_you_mean(name, known)
            raise UserError(f"unrecognised option {name!r}{hint}; see `{parser.prog} --help`")
        hint = "; config overrides look like --section.field=value" if overrides else ""
        raise UserError(f"unrecognised argument {item!r}{hint}; see `{parser.prog} --help`")
    return kept


def schema_has_sections(schema: type) -> bool:
    """True when the schema has nested sections (set with dotted overrides)."""
    return any("." in info.path for info in iter_fields(schema))


def set_overrides(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    setattr(args, _OVERRIDES, list(overrides))


def pop_overrides(args: argparse.Namespace) -> list[str]:
    """Take the `--section.field=value` items off `args` (for a command that passes them on, e.g. to a preset)."""
    overrides = list(getattr(args, _OVERRIDES, ()))
    setattr(args, _OVERRIDES, [])
    return overrides
