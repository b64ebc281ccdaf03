"""write lm-evaluation-harness tasks built from the corpus's held-out split: held-out perplexity
(loglikelihood_rolling) and a 4-way sentence-continuation multiple choice.

    slimkv eval lm-tasks [--text heldout|FILE] [--out DIR]
"""
from __future__ import annotations

import argparse

from ..eval.lm_harness import LmTasksJob
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, LmTasksJob)


def run(args: argparse.Namespace) -> int:
    from ..eval.lm_harness import MC_TASK, PPL_TASK, write_text_tasks

    paths, what, out = write_text_tasks(config_from_args(args, LmTasksJob))
    for task, path in paths.items():
        with open(path.with_suffix(".jsonl"), encoding="utf-8") as handle:
            lines = sum(1 for _ in handle)
        print(f"{task}: {path} ({lines} documents from {what})")
    print("run, for example:\n"
          f"  lm_eval --model slimkv --model_args pretrained=runs/main/model --include_path {out} "
          f"--tasks {PPL_TASK},{MC_TASK} --device cpu --batch_size 8\n"
          f"  lm_eval --model hf --model_args pretrained=runs/main/model,trust_remote_code=True --include_path {out} "
          f"--tasks {PPL_TASK},{MC_TASK}")
    return 0
