"""slimkv: language models whose inference memory does not grow with the context.

Rodimus (purely recurrent), Rodimus+ (recurrent + a sliding attention window) and RecurFormer (a pretrained
Llama/Qwen2 with its recency heads made recurrent): train them, convert checkpoints, evaluate, generate, measure.

How this file works (for developers): each command is a module `slimkv.cli.<name>` exposing `add_arguments(parser)`
and `run(args) -> int | None` (`OVERRIDES = True`: it also takes `--section.field=value` items); a module with
`DISPATCH` hands its line to a subcommand module `slimkv.cli.<name>_<sub>` (`slimkv eval mqar` runs
slimkv/cli/eval_mqar.py; DISPATCH names the one that runs when the first argument is no subcommand). Modules are imported
only when their command runs, so `slimkv --help` stays fast. Failures a user can fix (`slimkv.errors.UserError`, a
ValueError raised by slimkv itself, a full disk, a read-only folder, a missing path, a corrupt .safetensors file)
print one line and exit 2; anything else is a bug and keeps its traceback. `--debug` (anywhere) or SLIMKV_DEBUG=1
shows the traceback of every failure.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..config import did_you_mean
from ..errors import UserError, user_message

# command name -> (module, one-line help), in the order --help lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("slimkv.cli.demo", "a small random Rodimus+ model: generate with its constant-size cache and compare "
                                "its memory with a Transformer's (seconds, no downloads)"),
    "main": ("slimkv.cli.main_job", "the Quick-start job: fetch a corpus, train a tiny Rodimus+, evaluate it, plot "
                                    "loss and memory (10 minutes)"),
    "fetch": ("slimkv.cli.fetch", "download the offline assets: the text corpus, SmolLM2-135M, Qwen2.5-0.5B"),
    "train": ("slimkv.cli.train", "train a model from a YAML config or a preset (tiny, 130m, 1.4b), on one CPU or "
                                  "many GPUs"),
    "eval": ("slimkv.cli.eval", "evaluate a model: perplexity, MQAR recall, needle in a haystack, lm-eval tasks"),
    "generate": ("slimkv.cli.generate", "generate text from a saved model"),
    "convert": ("slimkv.cli.convert", "convert checkpoints between the official Rodimus layout and slimkv"),
    "recurformer": ("slimkv.cli.recurformer", "RecurFormer: profile a pretrained model's heads, convert, train"),
    "bench": ("slimkv.cli.bench", "benchmarks that write JSON and PNG: ops, kernels, train, decode, ..."),
}

EPILOG = """start here:
  slimkv demo                      seconds on a CPU, no downloads
  slimkv main                      the whole path on real text, in 10 minutes
  slimkv COMMAND --help            every option of a command, with its default

options anywhere on the line: --debug (full traceback of any failure)
documentation: README.md and docs/ (docs/architecture.md: where the code for each part lives)"""


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("slimkv")
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimkv", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"slimkv {version()}")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    taken = {name for action in parser._actions for name in action.option_strings}
    if "--verbose" not in taken:
        parser.add_argument("-v", "--verbose", dest="verbose", action="count", default=0,
                            help="more detail in the log (debug messages)")
    if "--quiet" not in taken:
        parser.add_argument("-q", "--quiet", dest="quiet", action="store_true", default=False,
                            help="only warnings and errors; no progress bars")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"slimkv: {record.levelname.lower()}: {message}"
        return message


def configure_logging(verbose: int, quiet: bool) -> None:
    """Library messages (the `slimkv` loggers) to stderr: info by default, debug with -v, warnings with -q."""
    logger = logging.getLogger("slimkv")
    for handler in list(logger.handlers):
        if getattr(handler, "_slimkv_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._slimkv_cli = True
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def subcommands(command: str) -> dict[str, tuple[str, str]]:
    """The subcommands of `command`: every module slimkv/cli/<command>_<name>.py, as {name: (module, help)}
    (underscores in names become dashes; the help is the first line of the module's docstring)."""
    import pkgutil

    from .. import cli

    found = {}
    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda i: i.name):
        if info.name.startswith(command + "_"):
            module = importlib.import_module(f"slimkv.cli.{info.name}")
            summary = (module.__doc__ or "").strip().split("\n")[0]
            found[info.name[len(command) + 1:].replace("_", "-")] = (module.__name__, summary)
    return found


def _resolve(name: str, rest: list[str]):
    """The module that runs `slimkv name rest...`, the arguments left for it, and its prog name."""
    module = importlib.import_module(COMMANDS[name][0])
    prog = f"slimkv {name}"
    if not hasattr(module, "DISPATCH"):
        return module, rest, prog
    found = subcommands(name)
    if rest and rest[0] in found:
        return importlib.import_module(found[rest[0]][0]), rest[1:], f"{prog} {rest[0]}"
    default = module.DISPATCH
    if rest and rest[0] not in ("-h", "--help"):
        if default is None or (rest[0].isidentifier() and did_you_mean(rest[0], found) and not
                               os.path.exists(rest[0])):
            raise UserError(f"unknown {name} subcommand {rest[0]!r}{did_you_mean(rest[0], found)}; choose from "
                            f"{', '.join(found)}")
        return importlib.import_module(found[default][0]), rest, prog
    return module, rest, prog


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # transformers' per-tensor "Loading weights" bar is noise next to our own progress bars
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SLIMKV_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    top = build_parser()
    # options before the command (slimkv -q train ...) belong to slimkv itself
    leading = []
    while argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        leading.append(argv.pop(0))
    top_args = top.parse_args(leading)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"slimkv: error: unknown command {name!r}{did_you_mean(name, COMMANDS)}; choose from "
              f"{', '.join(COMMANDS)} (slimkv --help)", file=sys.stderr)
        return 2
    try:
        module, rest, prog = _resolve(name, argv[1:])
        parser = argparse.ArgumentParser(prog=prog, description=module.__doc__ or COMMANDS[name][1],
                                         formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        module.add_arguments(parser)
        _add_verbosity(parser)
        args, unknown = parser.parse_known_args(rest)
        from .options import set_overrides, split_unknown

        set_overrides(args, split_unknown(parser, unknown, overrides=getattr(module, "OVERRIDES", False)))
        args.verbose = getattr(args, "verbose", 0) + top_args.verbose
        args.quiet = bool(getattr(args, "quiet", False) or top_args.quiet)
        configure_logging(args.verbose, args.quiet)
        code = module.run(args)
    except Exception as err:
        message = None if debug else user_message(err)
        if message is None:
            raise
        print(f"slimkv {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimkv {name}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
