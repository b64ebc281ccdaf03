"""train a model from a YAML run config or a shipped preset (tiny, 130m, 1.4b); any config field can be overridden.

    slimkv train tiny --optim.lr=3e-4 --model.arch=llama            a preset, two fields changed
    slimkv train configs/130m.yaml --resume                         continue the run from its latest checkpoint
    torchrun --nproc_per_node=N -m slimkv.cli.main train configs/130m.yaml --train.parallel=fsdp

The same on one CPU, one GPU, or N GPUs under torchrun (--train.parallel=ddp or fsdp). Ctrl-C saves a checkpoint and
exits 130; a NaN loss exits 2 without saving the bad state.
"""
from __future__ import annotations

import argparse
import json
import sys

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import RunConfig, preset_names
    from .options import fields_epilog

    parser.add_argument("config", metavar="CONFIG",
                        help=f"a YAML run config, or a shipped preset: {', '.join(preset_names())}")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                        help="continue from the latest checkpoint of this run, or from PATH (run or checkpoint dir)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue even though data or schedule settings (data.*, optim.*, "
                             "train.steps) differ from the checkpoint's")
    parser.add_argument("--json", default=None, metavar="PATH", help="write a summary of the run as JSON")
    parser.add_argument("--count-params", action="store_true",
                        help="print the parameter counts of every arch in model.layers_by_arch at this config's "
                             "sizes, and exit")
    parser.epilog = fields_epilog(RunConfig, "config fields (the defaults are the schema's; a preset or YAML file "
                                             "sets its own; override any with --section.field=value):")


def run(args: argparse.Namespace) -> int:
    from ..io import write_json
    from ..train.config import load_run_config
    from ..train.trainer import Trainer, TrainingInterrupted
    from .options import pop_overrides

    config = load_run_config(args.config, pop_overrides(args))
    if args.count_params:
        from ..train.factory import parameter_counts

        print(json.dumps(parameter_counts(config), indent=2))
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
            write_json(args.json, summary)
    return 0
