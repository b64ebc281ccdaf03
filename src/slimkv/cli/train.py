"""`slimkv train CONFIG [--section.field=value ...] [--resume [PATH]] [--allow-config-change]`

Runs the same way on one CPU, one GPU, or N GPUs under `torchrun --nproc_per_node=N -m slimkv.cli.main train ...`
(with --train.parallel=ddp or fsdp). Ctrl-C saves a checkpoint and exits 130; a NaN loss exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..train.config import load_run_config
from ..train.trainer import Trainer, TrainingInterrupted


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                        help="continue from the latest checkpoint of this run, or from PATH (run or checkpoint dir)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue even though data or schedule settings (data.*, optim.*, "
                             "train.steps) differ from the checkpoint's")
    parser.add_argument("--json", default=None, metavar="PATH", help="write a summary of the run as JSON")
    parser.add_argument("--count-params", action="store_true",
                        help="print the parameter counts of rodimus, rodimus_plus and llama for this config and exit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    _add_options(parser)
    # everything after CONFIG: config overrides, plus --resume / --json given after them (sorted out in run)
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.epilog = "Any config field can be overridden: --optim.lr=3e-4 --model.arch=llama --train.steps=100"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _split_overrides(args: argparse.Namespace) -> list[str]:
    """Pick --resume / --json out of the trailing arguments; the rest must be --section.field=value."""
    options = argparse.ArgumentParser(add_help=False)
    _add_options(options)
    late, rest = options.parse_known_args(args.overrides or [])
    args.resume = late.resume if late.resume is not None else args.resume
    args.json = late.json or args.json
    args.count_params = late.count_params or args.count_params
    args.allow_config_change = late.allow_config_change or args.allow_config_change
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r}; config overrides look like --section.field=value")
    return rest


def count_params(config) -> dict[str, dict[str, int]]:
    """Parameter counts of each arch at this config's sizes (built on the meta device: no memory, no init)."""
    import dataclasses

    import torch

    from ..train.factory import build_model, count_parameters

    data = config.data
    vocab_size = config.model.vocab_size or (data.synthetic_vocab_size if data.source == "synthetic"
                                             else data.tokenizer_vocab_size)
    counts = {}
    for arch in ("rodimus", "rodimus_plus", "llama", "mamba2", "gla"):
        model_cfg = dataclasses.replace(config.model, arch=arch)
        with torch.device("meta"):
            counts[arch] = {"layers": model_cfg.resolved_num_layers(),
                            **count_parameters(build_model(model_cfg, vocab_size))}
    return counts


def run(args: argparse.Namespace) -> int:
    overrides = _split_overrides(args)
    config = load_run_config(args.config, overrides)
    if args.count_params:
        print(json.dumps(count_params(config), indent=2))
        return 0
    trainer = Trainer(config, resume=args.resume, allow_config_change=args.allow_config_change)
    try:
        result = trainer.fit()
    except TrainingInterrupted as stop:
        print(f"slimkv train: {stop}", file=sys.stderr)
        return 130
    summary = {"run_dir": str(result.run_dir), "steps": result.steps, "tokens_seen": result.tokens_seen,
               "final_loss": result.losses[-1] if result.losses else None, "heldout_loss": result.heldout_loss,
               "heldout_ppl": result.heldout_ppl, "params": result.params,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None,
               "tokens_per_s": result.tokens_per_s, "peak_memory_bytes": result.peak_memory_bytes,
               "world_size": trainer.world_size, "parallel": config.train.parallel, "device": trainer.device.type}
    if trainer.is_main:
        print(json.dumps(summary))
        if args.json:
            from ..io import atomic_write_text

            atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    return 0
