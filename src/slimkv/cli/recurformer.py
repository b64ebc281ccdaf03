"""`slimkv recurformer profile | convert | train | experiment`: find recency-aware heads, replace them, train the
result, and run the whole comparison.

    slimkv recurformer profile --model data/models/smollm2-135m-instruct --json profile.json --png profile.png
    slimkv recurformer convert --model data/models/smollm2-135m-instruct --out runs/rf/mamba2 --ratio 0.5
    slimkv recurformer train smollm2-cpu --recurformer.student=runs/rf/mamba2 --recurformer.stage=A
    slimkv recurformer experiment --variants original,window --steps-b 4

Each action's options are generated from its config dataclass (cli/options.py): `ProfileConfig`
(recurformer/profile.py), `RecurFormerConvertConfig` (recurformer/convert.py), `ExperimentPlan`
(recurformer/experiments.py); every action also reads `--config FILE.yaml`. `train` takes a YAML preset plus
`--section.field=value` overrides (recurformer/config.py); `experiment` passes such overrides on to every training.
"""
from __future__ import annotations

import argparse

from .options import add_config_arguments, config_from_args, pop_overrides, split_unknown

# `train` and `experiment` take --section.field=value config overrides (cli/options.py)
OVERRIDES = True
_TAKES_OVERRIDES = ("train", "experiment")


class _ActionParser(argparse.ArgumentParser):
    """The parser of one action: an unknown option is a one-line error naming the closest option of this action
    (slimkv's top-level check only knows the options before the action); dotted overrides pass up where the action
    takes them."""

    takes_overrides = False

    def parse_known_args(self, args=None, namespace=None):
        namespace, unknown = super().parse_known_args(args, namespace)
        return namespace, split_unknown(self, unknown, overrides=self.takes_overrides)


def _action(sub, name: str, help_: str, **kwargs) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=kwargs.pop("description", help_), allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    parser.takes_overrides = name in _TAKES_OVERRIDES
    return parser


def _add_profile(sub) -> None:
    from ..recurformer.profile import ProfileConfig

    p = _action(sub, "profile", "recency ratio of every query head and KV unit on calibration text")
    add_config_arguments(p, ProfileConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")


def _add_convert(sub) -> None:
    from ..recurformer.convert import RecurFormerConvertConfig

    p = _action(sub, "convert", "replace recency-aware KV units with recurrent heads")
    add_config_arguments(p, RecurFormerConvertConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_train(sub) -> None:
    p = _action(sub, "train", "gates, Stage A or Stage B (or the control) on the project trainer",
                description="Train one RecurFormer stage from a YAML config (a file or a shipped preset name) plus "
                            "--section.field=value overrides (src/slimkv/recurformer/config.py).")
    p.add_argument("config", help="YAML config or preset name (e.g. smollm2-cpu)")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue this run from its latest checkpoint (or from the checkpoint given)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though data or schedule settings changed")


def _add_experiment(sub) -> None:
    from ..recurformer.experiments import ExperimentPlan

    p = _action(sub, "experiment", "the comparison of docs/recurformer.md: every variant built, trained, evaluated "
                                   "(JSON + table + PNG; resumes where it stopped)",
                epilog="--section.field=value items (e.g. --optim.lr=1e-4) are passed on to every training run "
                       "(src/slimkv/recurformer/config.py)")
    # the training overrides come from the dotted items of the line, not from an option of their own
    add_config_arguments(p, ExperimentPlan, skip=("overrides",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_ActionParser)
    _add_profile(sub)
    _add_convert(sub)
    _add_train(sub)
    _add_experiment(sub)


def _run_profile(args) -> int:
    from ..recurformer.profile import ProfileConfig, format_table, profile

    result = profile(config_from_args(args, ProfileConfig), progress=not args.quiet)
    if not args.quiet:
        print(format_table(result))
    return 0


def _run_convert(args) -> int:
    from ..recurformer.convert import RecurFormerConvertConfig, convert

    print(convert(config_from_args(args, RecurFormerConvertConfig), progress=not args.quiet).summary())
    return 0


def _run_train(args) -> int:
    from ..recurformer.config import load_recurformer_config
    from ..recurformer.train import train_recurformer

    config = load_recurformer_config(args.config, pop_overrides(args))
    result = train_recurformer(config, resume=args.resume, allow_config_change=args.allow_config_change,
                               progress=config.log.progress)
    held = f", held-out loss {result.heldout_loss:.4f}" if result.heldout_loss is not None else ""
    print(f"trained {result.steps} steps ({result.tokens_seen:,} tokens){held}; output {result.run_dir / 'model'}")
    return 0


def _run_experiment(args) -> int:
    import dataclasses

    from ..recurformer.experiments import ExperimentPlan, has_page, run_experiments, table

    overrides = pop_overrides(args)
    plan = config_from_args(args, ExperimentPlan)
    plan = dataclasses.replace(plan, overrides=(*plan.overrides, *overrides))
    results = run_experiments(plan)
    if has_page(results):
        print(table(results))
    else:
        print(f"{plan.out}/results.json: " + ", ".join(f"{name} ppl {row['ppl']:.2f}" for name, row in
                                                       results["rows"].items())
              + " (no table without the original's row: --merge this folder with one that scored it)")
    return 0


def run(args) -> int:
    actions = {"profile": _run_profile, "convert": _run_convert, "train": _run_train, "experiment": _run_experiment}
    return actions[args.action](args)
