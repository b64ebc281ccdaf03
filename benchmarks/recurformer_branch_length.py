"""Does a RecurFormer branch extrapolate past its training length? Its Stage A error at every position of long
held-out sequences, against the teacher's replaced heads (slimkv/recurformer/train.py BranchAlignment).

The converted models' passkey retrieval failed at 4K tokens, twice the 2,048 they trained at, for the mamba2 branch
and not for the window branch (docs/recurformer.md). If the branch's output drifts from the heads it replaces once
the sequence is longer than any it trained on, this curve rises past --train-length. Writes JSON (machine header,
per-model curves and the mean error per length band: within the training length, 1-2x, 2-4x, ...) and a PNG.

    PYTHONPATH=src python benchmarks/recurformer_branch_length.py --student mamba2=runs/rf/mamba2-A/model \\
        --student window_mamba2=runs/rf/window_mamba2-A/model --length 2048 --train-length 256 --out length.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from slimkv.bench.harness import machine_header, write_json


def load(folder: str, device: torch.device):
    from transformers import AutoModelForCausalLM

    import slimkv.models  # noqa: F401  (registers RecurFormer with the Auto classes)

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()


def heldout_sequences(tokenizer, length: int, count: int) -> torch.Tensor:
    """[count, length] consecutive tokens of the project corpus's held-out split."""
    from slimkv.data import fetch_corpus, read_split_documents
    from slimkv.eval.perplexity import encode_text

    text = "\n\n".join(read_split_documents(fetch_corpus(), "heldout"))
    ids = encode_text(tokenizer, text[: length * count * 8], tokenizer.eos_token_id)
    if ids.numel() < length * count:
        raise SystemExit(f"the held-out split has {ids.numel()} tokens; {length} x {count} asked for")
    return ids[: length * count].view(count, length)


def bands(curve: torch.Tensor, train_length: int) -> dict[str, float]:
    """Mean error within the training length, then per doubling beyond it."""
    out = {f"0-{train_length}": curve[:train_length].mean().item()}
    start = train_length
    while start < curve.numel():
        end = min(2 * start, curve.numel())
        out[f"{start}-{end}"] = curve[start:end].mean().item()
        start = end
    return out


def plot(results: dict, train_length: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, row in results.items():
        curve = torch.tensor(row["curve"])
        width = max(1, curve.numel() // 64)  # 64 bins of consecutive positions
        binned = curve[: curve.numel() // width * width].view(-1, width).mean(1)
        ax.plot((torch.arange(binned.numel()) + 0.5) * width, binned, label=name)
    ax.axvline(train_length, color="grey", linestyle=":", label=f"training length {train_length}")
    ax.set_yscale("log")
    ax.set_xlabel("position in the sequence (tokens)")
    ax.set_ylabel("relative squared error vs the replaced heads")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", action="append", required=True, metavar="NAME=DIR",
                        help="a converted (Stage A or B) model folder; repeat for several")
    parser.add_argument("--teacher", default="", help="the original model (default: the first student's source)")
    parser.add_argument("--length", type=int, default=2048, help="tokens per held-out sequence")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--train-length", type=int, required=True, help="the students' training sequence length")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="JSON path; the PNG goes beside it")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from slimkv.recurformer.train import BranchAlignment

    students = dict(spec.split("=", 1) for spec in args.student)
    device = torch.device(args.device)
    first = next(iter(students.values()))
    teacher_dir = args.teacher or json.loads(Path(first, "conversion.json").read_text())["source"]
    ids = heldout_sequences(AutoTokenizer.from_pretrained(teacher_dir), args.length, args.sequences).to(device)
    results = {}
    for name, folder in students.items():
        # a fresh teacher per student: BranchAlignment hooks into its layers
        stage = BranchAlignment(load(folder, device), load(teacher_dir, device))
        curve = torch.stack([stage.errors_by_position(ids[i:i + 1]).mean(0) for i in range(len(ids))]).mean(0).cpu()
        results[name] = {"folder": folder, "bands": bands(curve, args.train_length),
                         "curve": [round(x, 6) for x in curve.tolist()]}
        print(name, {k: f"{v:.4f}" for k, v in results[name]["bands"].items()}, flush=True)
        del stage
    out = Path(args.out)
    header = machine_header(args.device)
    write_json(out, {"header": header, "args": vars(args), "teacher": teacher_dir, "results": results})
    plot(results, args.train_length, out.with_suffix(".png"),
         f"RecurFormer branches past their training length ({args.sequences} x {args.length} held-out tokens; "
         f"commit {(header.get('git_commit') or '?')[:10]})")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    if any(math.isnan(v) for row in results.values() for v in row["bands"].values()):
        raise SystemExit("a curve has NaN")


if __name__ == "__main__":
    main()
