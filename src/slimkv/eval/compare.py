"""A controlled comparison of trained runs: the same tokens, one table of quality, retrieval, speed and state size.

    slimkv eval compare runs/matched/rodimus runs/matched/llama --niah-lengths 1024,2048,4096 --out runs/compare

For each `slimkv train` run directory: parameters (all and non-embedding), tokens trained and the median training
tokens/s (the run's metrics.jsonl), held-out perplexity on disjoint windows of the training length (the same
windows for every model, so recurrent and attention models are scored alike), needle-in-a-haystack exact match per
context length (slimkv.eval.niah, one heatmap per run under <out>/<run>/), and the decode state in bytes after
`state_tokens` tokens (models/memory.py: constant for the recurrent models, growing for the Transformer). Writes
compare.json (machine header + rows), compare.md and compare.png.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import ranged, setting


@dataclass
class CompareJob:
    """`slimkv eval compare RUN...`: score trained runs side by side (`compare_runs`)."""

    # `slimkv train` run directories (each with model/ and metrics.jsonl)
    runs: tuple[str, ...] = setting(positional=True)
    # needle-in-a-haystack context lengths (tokens); lengths beyond a model's position limit are skipped
    niah_lengths: tuple[int, ...] = ranged((1024, 2048, 4096, 8192), ge=1)
    # needle depths in percent of the haystack
    niah_depths: tuple[float, ...] = ranged((0.0, 25.0, 50.0, 75.0, 100.0), ge=0, le=100)
    # held-out tokens scored (0 = the whole split)
    ppl_tokens: int = ranged(0, ge=0)
    # the decode state is counted after this many tokens
    state_tokens: int = ranged(8192, ge=1)
    # corpus data directory ("" = $SLIMKV_DATA or ./data)
    data_dir: str = ""
    # where to run: auto, cpu, cuda, cuda:N or mps
    device: str = "auto"
    # compare.json, compare.md, compare.png and one NIAH folder per run go here
    out: str = setting("runs/compare", metavar="DIR")


def training_record(run_dir: Path) -> dict:
    """Tokens, steps and median tokens/s of a run's logged steps (the first two, compile and warm-up, left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no metrics.jsonl: give `slimkv train` run directories")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "heldout_ppl" in r]
    if not steps:
        raise ValueError(f"{str(path)!r} logs no training step")
    speeds = [r["tokens_per_s"] for r in steps[2:] or steps if r.get("tokens_per_s")]
    return {"steps": steps[-1]["step"], "tokens": steps[-1]["tokens"], "final_loss": steps[-1]["loss"],
            "tokens_per_s": statistics.median(speeds) if speeds else None,
            "train_heldout_ppl": evals[-1]["heldout_ppl"] if evals else None}


def _run_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no config.yaml: give `slimkv train` run directories")
    return yaml.safe_load(path.read_text())


def compare_runs(job: CompareJob, progress: bool = False) -> dict:
    """Score every run of `job` -> the report compare.json holds (also written, with compare.md and compare.png)."""
    from ..device import resolve_device
    from ..io import atomic_write_text, write_json
    from ..machine import machine_header
    from ..models.memory import inference_state_bytes
    from .loading import load_model_and_tokenizer
    from .niah import NIAHJob, run_niah_job
    from .perplexity import PerplexityJob, evaluate_perplexity

    if not job.runs:
        raise ValueError("give at least one `slimkv train` run directory")
    device = resolve_device(job.device)
    out = Path(job.out)
    rows = []
    for run in map(Path, job.runs):
        name = run.name
        record = {"run": name, "path": str(run), **training_record(run)}
        config = _run_config(run)
        seq_len = int(config["data"]["seq_len"])
        # one load per run: the counts first, then the perplexity (float32), then NIAH (which casts to bf16)
        loaded = load_model_and_tokenizer(run)
        model = loaded[0]
        params = sum(p.numel() for p in model.parameters())
        embedding = model.get_input_embeddings().weight.numel()
        record.update(arch=config["model"].get("arch", model.config.model_type), params=params,
                      non_embedding_params=params - embedding,
                      state_bytes=inference_state_bytes(model, job.state_tokens), state_tokens=job.state_tokens)
        ppl = evaluate_perplexity(PerplexityJob(model=str(run), ppl="heldout", seq_len=seq_len, stride=seq_len,
                                                mode="sliding", max_tokens=job.ppl_tokens, data_dir=job.data_dir,
                                                device=str(device)), progress=progress, loaded=loaded)
        record.update(heldout_ppl=ppl["token_ppl"], heldout_tokens=ppl["tokens"], trained_length=seq_len)
        _, niah = run_niah_job(NIAHJob(model=str(run), lengths=job.niah_lengths, depths=job.niah_depths,
                                       data_dir=job.data_dir, device=str(device), dtype="bfloat16",
                                       out=str(out / name)), loaded=loaded)
        del model, loaded
        record["niah"] = {str(n): sum(cells) / len(cells) for n, cells in zip(niah.lengths, niah.accuracy)}
        record["niah_skipped"] = list(niah.skipped_lengths)
        rows.append(record)
    report = {"header": machine_header(device), "job": asdict(job), "rows": rows}
    write_json(out / "compare.json", report, indent=1)
    atomic_write_text(out / "compare.md", format_table(report) + "\n")
    plot(report, out / "compare.png")
    return report


def format_table(report: dict) -> str:
    rows = report["rows"]
    lengths = sorted({int(n) for row in rows for n in row["niah"]})
    state_tokens = rows[0]["state_tokens"] if rows else 0
    header = ["run", "arch", "params", "tokens", "train tok/s", "held-out ppl",
              *[f"NIAH {n // 1024}K" if n % 1024 == 0 else f"NIAH {n}" for n in lengths],
              f"state at {state_tokens // 1024}K (MiB, bf16)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        niah = [f"{row['niah'][str(n)]:.2f}" if str(n) in row["niah"] else "-" for n in lengths]
        speed = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else "-"
        lines.append("| " + " | ".join([row["run"], row["arch"], f"{row['params'] / 1e6:.1f}M", f"{row['tokens']:,}",
                                        speed, f"{row['heldout_ppl']:.2f}", *niah,
                                        f"{row['state_bytes'] / 2**20:.2f}"]) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Held-out perplexity, NIAH exact match per length and state bytes, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    rows = report["rows"]
    names = [row["run"] for row in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    fig, (ax_ppl, ax_niah, ax_state) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_ppl.bar(names, [row["heldout_ppl"] for row in rows], color=colors)
    ax_ppl.set(ylabel="held-out perplexity", title="quality (same tokens for every run)")
    for row, color in zip(rows, colors):
        lengths = sorted(int(n) for n in row["niah"])
        ax_niah.plot(lengths, [row["niah"][str(n)] for n in lengths], marker="o", color=color, label=row["run"])
    ax_niah.set(xscale="log", xlabel="context length (tokens)", ylabel="exact match", ylim=(-0.05, 1.05),
                title="needle in a haystack")
    ax_niah.legend(fontsize=8)
    ax_state.bar(names, [row["state_bytes"] / 2**20 for row in rows], color=colors)
    tokens = rows[0]["state_tokens"] if rows else 0
    ax_state.set(ylabel="MiB (bf16, batch 1)", yscale="log", title=f"decode state after {tokens:,} tokens")
    for ax in (ax_ppl, ax_state):
        ax.tick_params(axis="x", rotation=20)
    header = report["header"]
    fig.suptitle(f"{header.get('device_name', '')}, commit {(header.get('git_commit') or '?')[:10]}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)
