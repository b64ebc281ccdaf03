"""`slimkv recurformer profile | convert | train`: find recency-aware heads, replace them, train the result."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import pop_overrides

# `train` and `experiment` take --section.field=value config overrides (cli/options.py)
OVERRIDES = True


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="recency ratio of every query head and KV unit on calibration text")
    p.add_argument("--model", required=True, help="HF model folder (e.g. data/models/smollm2-135m-instruct)")
    p.add_argument("--data", help="calibration text file (default: the corpus train split, fetched if missing)")
    p.add_argument("--window", type=int, default=32, help="k: RR counts the mass on the last k + 1 keys (default 32)")
    p.add_argument("--windows", default="8,16,32,64,128", help="other k values stored in the JSON (cheap)")
    p.add_argument("--num-sequences", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", help="write the profile as JSON here")
    p.add_argument("--png", help="write a heatmap (layers x units, layers x heads) here")
    p.add_argument("--quiet", action="store_true", help="no table, no progress bar")


def _add_convert(sub) -> None:
    from slimkv.layers.branches import branch_names
    from slimkv.recurformer.select import STRATEGIES

    p = sub.add_parser("convert", help="replace recency-aware KV units with recurrent heads")
    p.add_argument("--model", required=True, help="HF model folder (Llama, Qwen2 or Mistral family)")
    p.add_argument("--out", required=True, help="output folder (loads with from_pretrained after `import slimkv`): "
                                                "new, empty, or an earlier output of this command")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out this command did not write (only once the new output is complete)")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--ratio", type=float, help="fraction of KV units to replace, in [0, 1)")
    rule.add_argument("--threshold", type=float, help="replace every unit with score >= this")
    p.add_argument("--mixer", choices=branch_names(), default="mamba2", help="the branch (layers/branches.py)")
    p.add_argument("--init", choices=("zero", "attention"), default="zero",
                   help="zero: branch output projection zero (= pruning at step 0); attention: reuse W_q/W_k/W_v")
    p.add_argument("--select", choices=STRATEGIES, default="recency",
                   help="rank units by recency ratio or by learned gates (--gates), or pick them at random")
    p.add_argument("--gates", help="--select learned: the gates.json of a `recurformer train` stage-gates run")
    p.add_argument("--seed", type=int, default=0, help="seed for --select random and new weights")
    p.add_argument("--profile", help="a profile JSON from `slimkv recurformer profile` (else one is computed)")
    p.add_argument("--data", help="calibration text when no --profile is given")
    p.add_argument("--window", type=int, default=32, help="k of the recency ratio used for ranking")
    p.add_argument("--num-sequences", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--attn-window", type=int, default=64,
                   help="--mixer window: previous tokens each replaced head sees")
    p.add_argument("--attn-sinks", type=int, default=4, help="--mixer window: first tokens always visible (sinks)")
    p.add_argument("--state-size", type=int, default=None, help="mamba2 state size N (default: head dim)")
    p.add_argument("--allow-empty-layers", action="store_true",
                   help="allow replacing every KV unit of a layer (models with one KV head per layer)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="gates, Stage A or Stage B (or the control) on the project trainer",
                       description="Train one RecurFormer stage from a YAML config (a file or a shipped preset "
                                   "name) plus --section.field=value overrides (src/slimkv/recurformer/config.py).")
    p.add_argument("config", help="YAML config or preset name (e.g. smollm2-cpu)")
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue this run from its latest checkpoint (or from the checkpoint given)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though data or schedule settings changed")


def _add_experiment(sub) -> None:
    from slimkv.recurformer.experiments import ExperimentPlan

    plan = ExperimentPlan()
    p = sub.add_parser("experiment", help="the comparison of docs/recurformer.md: every variant built, trained, "
                                          "evaluated (JSON + table + PNG; resumes where it stopped)")
    p.add_argument("--out", default=plan.out)
    p.add_argument("--model", default="", help="pretrained model folder (default: slimkv fetch smollm2)")
    p.add_argument("--preset", default=plan.preset, help="training config (YAML file or preset name)")
    p.add_argument("--ratio", type=float, default=plan.ratio)
    p.add_argument("--variants", default=",".join(plan.variants),
                   help="comma-separated, from original, control, window, mamba2, ddts, random, learned")
    p.add_argument("--selection-branch", default=plan.selection_branch,
                   help="the branch of the random and learned selections")
    for name in ("gate_steps", "steps_a", "steps_b", "batch_size", "seq_len", "eval_tokens", "eval_seq_len",
                 "hashhop", "profile_sequences"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(plan, name))
    p.add_argument("--niah-lengths", default=",".join(map(str, plan.niah_lengths)))
    p.add_argument("--niah-depths", default=",".join(map(str, plan.niah_depths)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_profile(sub)
    _add_convert(sub)
    _add_train(sub)
    _add_experiment(sub)


def _run_profile(args) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from slimkv.models.recurformer import check_family
    from slimkv.recurformer.data import calibration_text
    from slimkv.recurformer.profile import calibration_batches, format_table, plot_heatmap, profile_model, write_json

    windows = [int(w) for w in args.windows.split(",") if w.strip()]
    if args.window < 1:
        raise ValueError(f"--window must be a positive number of tokens; got {args.window}")
    if not Path(args.model, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {args.model} (config.json missing); try `slimkv fetch smollm2`")
    check_family(AutoConfig.from_pretrained(args.model))
    text, source = calibration_text(args.data)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = calibration_batches(tokenizer, text, args.num_sequences, args.seq_len, args.window)
    profile = profile_model(model, ids, windows, args.window, args.batch_size, progress=not args.quiet,
                            name=Path(args.model).name)
    profile.calibration_text = source
    if not args.quiet:
        print(format_table(profile))
    if args.json:
        write_json(profile.to_json(), args.json)
    if args.png:
        plot_heatmap(profile, args.png)
    return 0


def _run_convert(args) -> int:
    from slimkv.recurformer.convert import convert_folder

    mixer_kwargs = {}
    if args.mixer == "mamba2" and args.state_size:
        mixer_kwargs = {"state_size": args.state_size}
    if args.mixer == "window":
        mixer_kwargs = {"window": args.attn_window, "sinks": args.attn_sinks}
    record = convert_folder(args.model, args.out, ratio=args.ratio, threshold=args.threshold, mixer=args.mixer,
                            init=args.init, select=args.select, seed=args.seed, profile=args.profile,
                            gates=args.gates, data=args.data, window=args.window, num_sequences=args.num_sequences,
                            seq_len=args.seq_len, mixer_kwargs=mixer_kwargs,
                            allow_empty_layers=args.allow_empty_layers, overwrite=args.overwrite)
    c4k = record["cache_bytes"]["4096"]
    print(f"replaced {record['num_replaced']}/{record['num_units']} KV units with {args.mixer} branches; "
          f"cache at 4K tokens {c4k['original'] / 2**20:.1f} MiB -> {c4k['converted'] / 2**20:.1f} MiB "
          f"({100 * c4k['saved_fraction']:.1f}% saved); wrote {args.out}")
    return 0


def _run_train(args) -> int:
    from slimkv.recurformer.config import load_recurformer_config
    from slimkv.recurformer.train import train_recurformer

    config = load_recurformer_config(args.config, pop_overrides(args))
    result = train_recurformer(config, resume=args.resume, allow_config_change=args.allow_config_change,
                               progress=config.log.progress)
    held = f", held-out loss {result.heldout_loss:.4f}" if result.heldout_loss is not None else ""
    print(f"trained {result.steps} steps ({result.tokens_seen:,} tokens){held}; output {result.run_dir / 'model'}")
    return 0


def _run_experiment(args) -> int:
    import logging

    from slimkv.recurformer.experiments import ExperimentPlan, run_experiments, table

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    plan = ExperimentPlan(
        out=args.out, model=args.model, preset=args.preset, ratio=args.ratio,
        variants=tuple(v for v in args.variants.split(",") if v), selection_branch=args.selection_branch,
        gate_steps=args.gate_steps, steps_a=args.steps_a, steps_b=args.steps_b, batch_size=args.batch_size,
        seq_len=args.seq_len, eval_tokens=args.eval_tokens, eval_seq_len=args.eval_seq_len, hashhop=args.hashhop,
        profile_sequences=args.profile_sequences, overrides=tuple(pop_overrides(args)),
        niah_lengths=tuple(int(n) for n in args.niah_lengths.split(",")),
        niah_depths=tuple(float(d) for d in args.niah_depths.split(",")))
    print(table(run_experiments(plan)))
    return 0


def run(args) -> int:
    actions = {"profile": _run_profile, "convert": _run_convert, "train": _run_train, "experiment": _run_experiment}
    return actions[args.action](args)
