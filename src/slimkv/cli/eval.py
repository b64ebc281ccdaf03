"""`slimkv eval`: perplexity of a model, or one of the papers' evaluations.

    slimkv eval MODEL --ppl FILE_OR_SPLIT [--seq-len N] [--stride S] [--json PATH]    perplexity (eval ppl)
    slimkv eval mqar [--archs ...] [--state-sizes ...] [--out DIR]                    MQAR sweep (JSON + PNG)
    slimkv eval niah MODEL [--lengths ...] [--depths ...] [--out DIR]                 needle in a haystack
    slimkv eval lm-tasks [--out DIR]                                                  lm-eval task folder
    slimkv eval length MODEL... [--length 4096] [--trained-length 256]               loss vs position
    slimkv eval compare RUN... [--niah-lengths ...] [--out DIR]                       trained runs side by side

MODEL: a Hugging Face folder (slimkv Rodimus/Rodimus+, RecurFormer or any causal LM) or a `slimkv train` run
directory. `slimkv eval TASK --help` lists each task's options with their defaults.
"""
from __future__ import annotations

import argparse

# `slimkv eval X ...` runs slimkv/cli/eval_X.py; anything else is `slimkv eval ppl ...` (MODEL first)
DISPATCH = "ppl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .main import subcommands

    tasks = subcommands("eval")
    parser.add_argument("task", metavar="MODEL_OR_TASK", choices=list(tasks),
                        help="a model folder or run directory (perplexity), or a task: " + ", ".join(tasks))


def run(args: argparse.Namespace) -> int:
    raise AssertionError("slimkv eval dispatches to a task module before run")
