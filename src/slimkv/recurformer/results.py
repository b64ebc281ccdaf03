"""The CPU results of docs/recurformer.md: SmolLM2-135M, original vs control vs RecurFormer variants at ratio 0.5.

    python -m slimkv.recurformer.results --out runs/recurformer/results [--steps-a 24 --steps-b 6 ...]

Every step goes through the public commands (`slimkv recurformer profile|convert|train`) and skips work whose output
already exists, so an interrupted run resumes. Writes results.json, results.md (the table) and results.png.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..io import atomic_write, atomic_write_text

VARIANTS = (
    # name, mixer, selection
    ("mamba2", "mamba2", "recency"),
    ("ddts", "ddts", "recency"),
    ("window", "window", "recency"),
    ("mamba2-random", "mamba2", "random"),
)


def _cli(argv: list[str]) -> None:
    from slimkv.cli.main import main

    code = main(argv)
    if code:
        raise SystemExit(f"command failed ({code}): slimkv {' '.join(argv)}")


def heldout_ids(tokenizer, num_tokens: int) -> torch.Tensor:
    from slimkv.eval.perplexity import encode_text

    from .text import load_text

    text, _ = load_text(None, "heldout")
    ids = encode_text(tokenizer, text[: num_tokens * 8], tokenizer.eos_token_id)
    return ids[: num_tokens + 1]


def evaluate_folder(folder: Path, ids: torch.Tensor, seq_len: int, hashhop_n: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimkv.eval.perplexity import token_nll

    from . import hashhop
    from .convert import cache_bytes

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    started = time.time()
    with torch.no_grad():
        nll, count = token_nll(model, ids, seq_len=seq_len, stride=seq_len, mode="sliding")
    row = {"ppl": math.exp(nll / count), "tokens": count, "eval_seconds": round(time.time() - started, 1)}
    row["cache_bytes"] = {str(T): cache_bytes(model, T) for T in (1024, 4096, 16384)}
    if hashhop_n:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        examples = hashhop.make_examples(hashhop_n, seed=123, num_chains=3, hops=2)
        row["hashhop_exact_match"] = hashhop.evaluate(model, tokenizer, examples)["exact_match"]
    return row


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in rows.items():
        x = row["cache_bytes"]["4096"] / 2**20
        ax.scatter(x, row["ppl"], s=30)
        ax.annotate(name, (x, row["ppl"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("decode cache at 4K tokens (MiB, float32)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M: RecurFormer variants at ratio 0.5 (CPU budget run)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)


def table(results: dict) -> str:
    rows = results["rows"]
    control = rows.get("control", rows["original"])["ppl"]
    full4k = rows["original"]["cache_bytes"]["4096"]
    lines = ["| model | held-out ppl | vs control | cache 1K (MiB) | cache 4K (MiB) | cache 16K (MiB) | saved at 4K |"
             " HashHop EM |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        c = row["cache_bytes"]
        hh = row.get("hashhop_exact_match")
        lines.append(
            f"| {name} | {row['ppl']:.2f} | {100 * (row['ppl'] / control - 1):+.1f}% | {int(c['1024']) / 2**20:.1f} | "
            f"{int(c['4096']) / 2**20:.1f} | {int(c['16384']) / 2**20:.1f} | "
            f"{100 * (1 - int(c['4096']) / full4k):.1f}% | {'-' if hh is None else f'{hh:.2f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/recurformer/results")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--profile-sequences", type=int, default=16)
    parser.add_argument("--profile-seq-len", type=int, default=512)
    parser.add_argument("--steps-a", type=int, default=24)
    parser.add_argument("--steps-b", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--lr-branch", type=float, default=1e-3)
    parser.add_argument("--lr-branch-b", type=float, default=3e-4)
    parser.add_argument("--lr-base", type=float, default=1e-5)
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS), help="comma-separated subset")
    parser.add_argument("--hashhop", type=int, default=8, help="HashHop examples per trained model (0: skip)")
    args = parser.parse_args(argv)

    from slimkv.data.pretrained import fetch_smollm2
    from transformers import AutoTokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = fetch_smollm2()
    profile = out / "profile.json"
    if not profile.exists():
        _cli(["recurformer", "profile", "--model", str(source), "--json", str(profile), "--png",
              str(out / "profile.png"), "--num-sequences", str(args.profile_sequences),
              "--seq-len", str(args.profile_seq_len), "--quiet"])
    common = ["--steps-b", str(args.steps_b), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
              "--lr-branch", str(args.lr_branch), "--lr-branch-b", str(args.lr_branch_b), "--lr-base", str(args.lr_base)]
    folders = {"original": source}
    control = out / "control"
    if not (control / "train.json").exists():
        _cli(["recurformer", "train", "--model", str(source), "--out", str(control), "--control", "--stage", "B",
              *common])
    folders["control"] = control
    wanted = set(args.variants.split(","))
    for name, mixer, select in (v for v in VARIANTS if v[0] in wanted):
        converted = out / f"{name}-r{args.ratio}"
        if not (converted / "conversion.json").exists():
            _cli(["recurformer", "convert", "--model", str(source), "--out", str(converted), "--ratio",
                  str(args.ratio), "--mixer", mixer, "--select", select, "--profile", str(profile)])
        folders[f"{name} (step 0)"] = converted
        trained = out / f"{name}-r{args.ratio}-trained"
        if not (trained / "train.json").exists():
            _cli(["recurformer", "train", "--model", str(converted), "--out", str(trained), "--stage", "AB",
                  "--steps-a", str(args.steps_a), *common, "--png", str(out / f"{name}-train.png")])
        folders[f"{name} (A+B)"] = trained

    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = heldout_ids(tokenizer, args.eval_tokens)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"rows": {}}
    results["settings"] = vars(args)
    for name, folder in folders.items():
        if name in results["rows"]:
            continue
        print(f"evaluating {name} ({folder}) ...", flush=True)
        hashhop_n = 0 if "step 0" in name else args.hashhop
        results["rows"][name] = evaluate_folder(Path(folder), ids, args.eval_seq_len, hashhop_n)
        atomic_write_text(results_path, json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "results.md", table(results) + "\n")
    plot(results, out / "results.png")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
