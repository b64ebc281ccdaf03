"""`slimkv <command> ...`: argument parsing and printing only; the work lives in the library.

Each command is a module `slimkv.cli.<name>` exposing `add_arguments(parser)` and `run(args) -> int | None`.
Modules are imported only when their command runs, so `slimkv --help` stays fast.

Failures a user can fix (`slimkv.errors.UserError`, a ValueError raised by slimkv itself, a full disk, a
read-only or forbidden folder, a missing path, a corrupt .safetensors file) print one line and exit 2; anything
else is a bug and keeps its traceback. `--debug` (anywhere on the line) or SLIMKV_DEBUG=1 shows the traceback of
every failure.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import user_message

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "main": ("slimkv.cli.main_job", "the end-to-end job: fetch corpus, train tiny Rodimus+, evaluate, plot"),
    "demo": ("slimkv.cli.demo", "build a small Rodimus+ model, generate, compare cache bytes with a Transformer"),
    "fetch": ("slimkv.cli.fetch", "fetch offline assets: corpus, smollm2, qwen2.5-0.5b"),
    "train": ("slimkv.cli.train", "train a model from a YAML config (with --field=value overrides)"),
    "eval": ("slimkv.cli.eval", "evaluate: perplexity, MQAR sweep, needle in a haystack, lm-eval tasks"),
    "generate": ("slimkv.cli.generate", "generate text from a saved model"),
    "convert": ("slimkv.cli.convert", "convert checkpoints: official <-> slimkv"),
    "recurformer": ("slimkv.cli.recurformer", "RecurFormer: profile | convert | train"),
    "bench": ("slimkv.cli.bench", "benchmarks that write JSON and PNG"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimkv", description=__doc__.splitlines()[0],
                                     epilog="--debug (anywhere): show the full traceback of any failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # transformers' per-tensor "Loading weights" bar is noise next to our own progress bars
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SLIMKV_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"slimkv: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"slimkv {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv[1:])
    # a command with an `overrides` argument takes --section.field=value strings anywhere on its line
    if unknown and isinstance(getattr(args, "overrides", None), list) and all(
            item.startswith("--") and "=" in item for item in unknown):
        args.overrides = args.overrides + unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
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
