"""multi-query associative recall (Zoology protocol): train and score a sweep of model kind x state size x learning
rate on the project trainer; writes mqar.json and mqar.png.

    slimkv eval mqar --archs rodimus,rodimus_plus,llama --state-sizes 16,64 --max-minutes 5 --device cuda
"""
from __future__ import annotations

import argparse

from ..eval.mqar_sweep import MQARSweepConfig
from .options import add_config_arguments, config_from_args

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, MQARSweepConfig)


def run(args: argparse.Namespace) -> int:
    from ..eval.mqar_sweep import sweep_to_folder

    config = config_from_args(args, MQARSweepConfig)
    target = config.target_segment().name

    def report_run(i: int, n: int, record: dict) -> None:
        if not args.quiet:
            state = "full" if record["state_size"] is None else record["state_size"]
            print(f"[{i + 1}/{n}] {record['arch']} d={record['d_model']} n={state} lr={record['lr']:.2e}: "
                  f"{target} acc {record['accuracy'][target]:.3f}, on its training examples "
                  f"{_scores(record['train_accuracy'])}, loss {record['final_loss']:.3f}, "
                  f"{record['steps']} steps in {record['train_seconds']:.0f}s", flush=True)

    report, json_path, png_path = sweep_to_folder(config, on_run=report_run)
    # a merge scores at its parts' target (or --target), not at this command line's default test segments
    print(f"best over learning rates, accuracy at {report['target']}:")
    for row in report["best"]:
        state = "full" if row["state_size"] is None else row["state_size"]
        seeds = (f", mean of seeds {','.join(map(str, row['seeds']))}: "
                 f"{' '.join(f'{a:.3f}' for a in row['accuracy_per_seed'])}") if len(row["seeds"]) > 1 else ""
        print(f"  {row['arch']:<13} d={row['d_model']:<4} n={state!s:<5} acc {row['accuracy']:.3f} "
              f"(lr {row['lr']:.2e}, state {row['state_bytes']:,} bytes{seeds})")
    print(f"wrote {json_path} and {png_path} ({len(report['runs'])} of {report['planned_runs']} runs, "
          f"{report['seconds']:.0f}s)")
    return 0


def _scores(accuracy: dict[str, float]) -> str:
    """{segment: accuracy} -> '64x4 0.912 128x8 0.801'."""
    return " ".join(f"{name} {acc:.3f}" for name, acc in accuracy.items())
