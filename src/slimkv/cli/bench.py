"""`slimkv bench ops ...`: micro-benchmarks that write JSON + PNG under benchmarks/results/.

    slimkv bench ops                                  # gla backends on CPU, small shapes
    slimkv bench ops --device cuda --shapes mamba2 --backends chunked triton --json out.json
    slimkv bench kernels --out benchmarks/results/h100   # GPU: check every Triton kernel, time vs fla (if installed)
    slimkv bench train --out $OUT                        # GPU: training throughput (options: slimkv/cli/bench_train.py)
    slimkv bench decode --out runs/bench/decode          # GPU: ms/token vs context and batch, against HF Llama
    slimkv bench decode --device cpu --tiny --contexts 128 --models rodimus rodimus_plus   # CPU smoke run
"""
from __future__ import annotations

import argparse
import datetime

import torch

# what -> one-line help; each `what` has its own run function below
BENCHMARKS = {"ops": "gla backends: tokens/s forward and forward+backward, plus error vs the float64 spec",
              "kernels": "GPU only: correctness of every Triton kernel vs float64, timings vs floors and the fla peer",
              "train": "GPU only: training tokens/s, memory, MFU and kernel breakdown of Rodimus, Rodimus+ and a "
                       "matched Llama; --check: the fused kernels against their specs",
              "decode": "generation ms/token vs context and batch for Rodimus, Rodimus+ and a matched HF Llama"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slimkv.bench.ops import GLA_BACKENDS, SHAPE_SETS

    parser.add_argument("what", choices=list(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="ops, decode: auto (default) is cuda when a GPU is visible, else cpu")
    parser.add_argument("--shapes", default="small", choices=list(SHAPE_SETS), help="shape set (default small)")
    parser.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                        help=f"backends to time (default: every one available on the device): {', '.join(GLA_BACKENDS)}")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, after one warmup")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="default benchmarks/results/gla_<device>_<date>.json")
    parser.add_argument("--png", default=None, help="default benchmarks/results/gla_<device>_<date>.png")
    parser.add_argument("--out", default="benchmarks/results",
                        help="kernels, train: output folder (gla_gpu.json/.png, train_bench.json/.png)")
    parser.add_argument("--budget", type=float, default=None,
                        help="kernels, train: seconds before later sections are cut (default 480 and 300)")
    from slimkv.cli.bench_train import add_arguments as add_train_arguments

    add_train_arguments(parser)  # also --models and --no-check, which decode shares
    decode = parser.add_argument_group("decode")
    decode.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768, 131072],
                        help="decode: prompt lengths at batch 1 (default 1K 8K 32K 128K; Llama stops at 32K)")
    decode.add_argument("--new-tokens", type=int, default=128, help="decode: tokens per timed call (default 128)")
    decode.add_argument("--batch", type=int, default=16, help="decode: the batched measurement's batch (default 16)")
    decode.add_argument("--no-llama-best", action="store_true", help="decode: skip Llama's static cache + compile")
    decode.add_argument("--tiny", action="store_true", help="decode: small models instead of the 1.4B shapes")


def run_decode(args: argparse.Namespace) -> int:
    from slimkv.bench.decode import DecodeBenchConfig, bench_env_header, print_table, run_decode_bench

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    out = args.out if args.out != "benchmarks/results" else "runs/bench/decode"
    models = tuple(args.models or ("rodimus", "rodimus_plus", "llama"))
    unknown = [m for m in models if m not in ("rodimus", "rodimus_plus", "llama")]
    if unknown:
        raise ValueError(f"bench decode: unknown model(s) {', '.join(unknown)}; choose rodimus, rodimus_plus, llama")
    cfg = DecodeBenchConfig(out=out, device=device, models=models, contexts=tuple(args.contexts),
                            llama_contexts=tuple(c for c in args.contexts if c <= 32768), new_tokens=args.new_tokens,
                            repeats=args.repeats, batch=args.batch, check=not args.no_check,
                            llama_best=not args.no_llama_best, budget_s=args.budget or 520.0, tiny=args.tiny,
                            profile=device == "cuda")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_decode_bench(cfg, bench_env_header(device))
    print(print_table(report))
    print(f"wrote {out}/decode.json and decode.png")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.what == "decode":
        return run_decode(args)
    if args.what == "train":
        from slimkv.cli.bench_train import run as run_train

        return run_train(args)
    if args.what == "kernels":
        if not torch.cuda.is_available():
            raise ValueError("slimkv bench kernels needs a CUDA GPU")
        from slimkv.bench.gpu_ops import run as run_kernels

        run_kernels(args.out, budget_s=args.budget if args.budget is not None else 480.0)
        return 0
    from tqdm import tqdm

    from slimkv.bench.ops import GLA_BACKENDS, SHAPE_SETS, bench_gla, machine_header, write_results

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1; got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.backends or list(GLA_BACKENDS)
    unknown = [name for name in names if name not in GLA_BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(GLA_BACKENDS)}")
    device = torch.device(args.device)
    names = [name for name in names if GLA_BACKENDS[name].available(device)]
    if not names:
        raise ValueError(f"none of the chosen backends runs on {args.device}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    stem = f"benchmarks/results/gla_{args.device}_{date}"
    json_path = args.json or f"{stem}.json"
    png_path = args.png or f"{stem}.png"

    shapes = SHAPE_SETS[args.shapes]
    dtypes = [DTYPES[name] for name in args.dtypes]
    header = machine_header(device)
    with tqdm(total=len(shapes) * len(dtypes) * len(names), desc="bench gla", unit="run") as bar:
        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        results = bench_gla(device, shapes, names, dtypes, args.repeats, progress=progress)
    write_results(results, json_path, png_path, header=header)

    print(f"{'backend':<10} {'shape':<34} {'dtype':<8} {'fwd tok/s':>12} {'fwd+bwd tok/s':>14} {'o rel err':>10}")
    forward = [r for r in results if r["mode"] == "forward"]
    for row in forward:
        train = next(r for r in results if r["mode"] == "forward+backward" and r["backend"] == row["backend"]
                     and r["shape"] == row["shape"] and r["dtype"] == row["dtype"])
        train_rate = "skipped" if train["tokens_per_s"] is None else f"{train['tokens_per_s']:.0f}"
        print(f"{row['backend']:<10} {row['shape']:<34} {row['dtype']:<8} {row['tokens_per_s']:>12.0f} "
              f"{train_rate:>14} {row['o_rel_err']:>10.1e}")
    print(f"wrote {json_path} and {png_path}")
    return 0
