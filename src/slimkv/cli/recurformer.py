"""`slimkv recurformer profile | convert | train`: find recency-aware heads, replace them, train the result."""
from __future__ import annotations

import argparse
from pathlib import Path


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="recency ratio of every query head and KV unit on calibration text")
    p.add_argument("--model", required=True, help="HF model folder (e.g. data/models/smollm2-135m-instruct)")
    p.add_argument("--data", help="calibration text file (default: data/corpus/train.txt, else a Shakespeare fallback)")
    p.add_argument("--window", type=int, default=32, help="k: RR counts the mass on the last k + 1 keys (default 32)")
    p.add_argument("--windows", default="8,16,32,64,128", help="other k values stored in the JSON (cheap)")
    p.add_argument("--num-sequences", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", help="write the profile as JSON here")
    p.add_argument("--png", help="write a heatmap (layers x units, layers x heads) here")
    p.add_argument("--quiet", action="store_true", help="no table, no progress bar")


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="replace recency-aware KV units with recurrent heads")
    p.add_argument("--model", required=True, help="HF model folder (Llama, Qwen2 or Mistral family)")
    p.add_argument("--out", required=True, help="output folder (loads with from_pretrained after `import slimkv`): "
                                                "new, empty, or an earlier output of this command")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out this command did not write (only once the new output is complete)")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--ratio", type=float, help="fraction of KV units to replace, in [0, 1)")
    rule.add_argument("--threshold", type=float, help="replace every unit with RR >= this")
    p.add_argument("--mixer", choices=("mamba2", "ddts", "window"), default="mamba2")
    p.add_argument("--init", choices=("zero", "attention"), default="zero",
                   help="zero: branch output projection zero (= pruning at step 0); attention: reuse W_q/W_k/W_v")
    p.add_argument("--select", choices=("recency", "random"), default="recency",
                   help="rank units by recency ratio, or pick them at random (the ablation)")
    p.add_argument("--seed", type=int, default=0, help="seed for --select random and new weights")
    p.add_argument("--profile", help="a profile JSON from `slimkv recurformer profile` (else one is computed)")
    p.add_argument("--data", help="calibration text when no --profile is given")
    p.add_argument("--window", type=int, default=32, help="k of the recency ratio used for ranking")
    p.add_argument("--num-sequences", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--attn-window", type=int, default=64, help="--mixer window: previous tokens each replaced head sees")
    p.add_argument("--attn-sinks", type=int, default=4, help="--mixer window: first tokens always visible (sinks)")
    p.add_argument("--state-size", type=int, default=None, help="mamba2 state size N (default: head dim)")
    p.add_argument("--allow-empty-layers", action="store_true",
                   help="allow replacing every KV unit of a layer (models with one KV head per layer)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="Stage A (branch alignment) and Stage B (continual training), or --control")
    p.add_argument("--model", required=True, help="a converted folder, or the original one with --control")
    p.add_argument("--teacher", help="the original model folder (Stage A and KL; default: conversion.json's source)")
    p.add_argument("--out", required=True, help="output folder for the trained model (new, empty, or an earlier "
                                                "output of this command)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out this command did not write (only once the new output is complete)")
    p.add_argument("--stage", choices=("A", "B", "AB"), default="AB")
    p.add_argument("--control", action="store_true", help="train the unconverted model with the Stage B recipe")
    p.add_argument("--data", help="training text (default: data/corpus/train.txt, else the Shakespeare fallback)")
    p.add_argument("--steps-a", type=int, default=100)
    p.add_argument("--steps-b", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr-branch", type=float, default=1e-3, help="Stage A learning rate of the branches")
    p.add_argument("--lr-branch-b", type=float, default=3e-4, help="Stage B learning rate of the branches")
    p.add_argument("--lr-base", type=float, default=1e-5, help="Stage B learning rate of pretrained weights (0: frozen)")
    p.add_argument("--kl", type=float, default=0.0, help="Stage B weight of KL to the teacher's logits")
    p.add_argument("--hashhop-frac", type=float, default=0.0, help="fraction of Stage B batches that are HashHop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the loss curves here")
    p.add_argument("--png", help="plot the loss curves here")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_profile(sub)
    _add_convert(sub)
    _add_train(sub)


def _load_model(folder: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(folder, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {folder} (config.json missing); try `slimkv fetch smollm2`")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def _run_profile(args) -> int:
    from slimkv.recurformer.families import check_family
    from slimkv.recurformer.profile import calibration_batches, format_table, plot_heatmap, profile_model, write_json
    from slimkv.recurformer.text import load_text

    windows = [int(w) for w in args.windows.split(",") if w.strip()]
    if args.window < 1:
        raise ValueError(f"--window must be a positive number of tokens; got {args.window}")
    from transformers import AutoConfig

    if not Path(args.model, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {args.model} (config.json missing)")
    check_family(AutoConfig.from_pretrained(args.model))
    text, source = load_text(args.data, "train")
    model, tokenizer = _load_model(args.model)
    ids = calibration_batches(tokenizer, text, args.num_sequences, args.seq_len, args.window)
    profile = profile_model(model, ids, windows, args.window, args.batch_size, progress=not args.quiet,
                            name=Path(args.model).name)
    profile.calibration_text = source
    data = profile.to_json()
    if not args.quiet:
        print(format_table(profile))
    if args.json:
        write_json(data, args.json)
    if args.png:
        plot_heatmap(profile, args.png)
    return 0


def run(args) -> int:
    if args.action == "profile":
        return _run_profile(args)
    if args.action == "convert":
        from slimkv.recurformer.convert import convert_cli

        return convert_cli(args)
    from slimkv.recurformer.train import train_cli

    return train_cli(args)
