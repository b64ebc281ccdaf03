"""MQAR training runs on the project trainer, a sweep over model kind x state size x learning rate, JSON + PNG.

    config = MQARSweepConfig(archs=("rodimus", "llama"), state_sizes=(16, 64), steps=2000)
    report = run_sweep(config)               # {"header", "config", "runs", "best", "paper_fig1b"}
    plot_sweep(report, "mqar.png")

One run: a 2-layer model of width d_model trained with `slimkv.train.Trainer` on the Zoology train segments
(eval/mqar.py: MQARTrainSource, loss on query positions only), then scored on every test segment.
The state-size knob of each arch is a model config field (`STATE_FIELDS`); fields the run config does not know are
passed to the Hugging Face config through `model.extra`, so a new arch slots in by adding its entry.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch

from ..config import ranged, setting

from .mqar import (DEFAULT_POWER_A, DEFAULT_VOCAB, ZOOLOGY_TEST, ZOOLOGY_TRAIN, MQARTrainSource, Segment,
                   make_test_sets, parse_segments, query_accuracy)

log = logging.getLogger(__name__)

# which config field sets the recurrent state size of each arch (None: no such knob, e.g. full attention)
STATE_FIELDS: dict[str, str | None] = {
    "rodimus": "mem_size",        # the DDTS state's key size m ("expansion factor n" in the paper)
    "rodimus_plus": "mem_size",
    "mamba2": "mem_size",         # SSD state size per head
    "gla": "mem_size",            # key dim per head
    "llama": None,                # the Transformer: its KV cache grows with the context
}

# Rodimus paper Fig. 1b: accuracy at sequence length 1024 with 256 key-value pairs (docs/rodimus.md section 6)
PAPER_FIG1B: dict[str, dict[int, float]] = {
    "rodimus_plus": {16: 0.37, 32: 0.72, 64: 0.91, 128: 0.97, 256: 0.97},
    "rodimus": {16: 0.25, 32: 0.37, 64: 0.65, 128: 0.74, 256: 0.82},
    "mamba2": {16: 0.11, 32: 0.26, 64: 0.31, 128: 0.41, 256: 0.61},
}

ARCH_LABELS = {"rodimus": "Rodimus", "rodimus_plus": "Rodimus+", "mamba2": "Mamba2", "gla": "GLA",
               "llama": "Transformer"}


def parse_train_segments(spec: str) -> tuple[Segment, ...]:
    """'zoology' or SEQxPAIRS[:EXAMPLES],... (20,000 examples where not given)."""
    return ZOOLOGY_TRAIN if spec.strip() == "zoology" else parse_segments(spec, 20_000)


def parse_test_segments(spec: str) -> tuple[Segment, ...]:
    """'zoology' or SEQxPAIRS[:EXAMPLES],... (1000 examples where not given)."""
    return ZOOLOGY_TEST if spec.strip() == "zoology" else parse_segments(spec, 1000)


@dataclass
class MQARSweepConfig:
    """`slimkv eval mqar`: which runs the sweep trains and scores, and how (`sweep_to_folder`, `run_sweep`)."""

    # model kinds (archs of slimkv train)
    archs: tuple[str, ...] = ("rodimus", "rodimus_plus", "mamba2", "gla", "llama")
    # state sizes n: Rodimus mem_size, Mamba2 state, GLA key dim (not used by llama)
    state_sizes: tuple[int, ...] = ranged((16, 32, 64, 128, 256), ge=1)
    # model widths
    d_models: tuple[int, ...] = ranged((128,), ge=1)
    # learning rates (Zoology's logspace(-3, -1.5, 4)); the best one is reported
    lrs: tuple[float, ...] = ranged((1e-3, 3.2e-3, 1e-2, 3.2e-2), gt=0)
    # layers per model
    num_layers: int = setting(2, flags=("--layers",), ge=1)
    # train segments SEQxPAIRS[:EXAMPLES],...; zoology = 64x4:100000,128x8:20000,256x16:20000,256x32:20000,
    # 256x64:20000
    train_segments: tuple[Segment, ...] = setting(ZOOLOGY_TRAIN, flags=("--train",), parse=parse_train_segments,
                                                  shown="zoology", metavar="SEGMENTS")
    # test segments; zoology = 64x4,64x8,64x16,128x32,256x64,512x128,1024x256 (1000 examples each)
    test_segments: tuple[Segment, ...] = setting(ZOOLOGY_TEST, flags=("--test",), parse=parse_test_segments,
                                                 shown="zoology", metavar="SEGMENTS")
    # the test segment whose accuracy picks the best learning rate and is plotted ("" = the longest)
    target: str = ""
    vocab_size: int = DEFAULT_VOCAB
    # Zoology's power-law exponent of the key-query gaps
    power_a: float = DEFAULT_POWER_A
    # optimizer steps per run
    steps: int = ranged(1000, ge=1)
    # if > 0: steps = this many passes over the train set (Zoology: 32)
    epochs: float = ranged(0.0, ge=0)
    batch_size: int = ranged(256, ge=1)
    # sequences per forward pass; 0 = batch_size
    micro_batch_size: int = ranged(0, ge=0)
    # -1 = min(100, steps / 10)
    warmup_steps: int = ranged(-1, ge=0, special=(-1,))
    weight_decay: float = ranged(0.1, ge=0)
    # Rodimus+ window W (each query sees W/2 previous tokens): kept small, or attention alone solves the task
    window_size: int = ranged(128, ge=2, even=True)
    # Rodimus+ attention heads (0 = d_model / 64, at least 1)
    num_heads: int = ranged(0, ge=0)
    # wall-time budget of the whole sweep in minutes (0 = no limit); each run gets an equal share of what is left
    max_minutes: float = ranged(0.0, ge=0)
    # auto (cuda when present), cpu or cuda
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto = bf16 autocast on CUDA
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile each block
    compile: bool = False
    seed: int = ranged(0, ge=0)
    # mqar.json and mqar.png go here, each run's folder under runs/ beside them
    out_dir: str = setting("runs/mqar", flags=("--out",), metavar="DIR")
    eval_batch_size: int = ranged(64, ge=1)
    # keep each run's final checkpoint
    keep_runs: bool = False
    # the model config field that sets each arch's state size (ARCH= for none), e.g. mamba2=state_size
    state_fields: dict[str, Optional[str]] = setting(default_factory=lambda: dict(STATE_FIELDS),
                                                     flags=("--state-field",), metavar="ARCH=FIELD")
    # instead of training: merge the mqar.json of these sweep folders (parts of one grid run side by side, e.g. one
    # process per arch on one GPU) into --out
    merge: tuple[str, ...] = setting((), metavar="DIR,...")

    def __post_init__(self) -> None:
        if self.epochs > 0:
            self.steps = steps_for_epochs(self, self.epochs)

    def target_segment(self) -> Segment:
        if not self.target:
            return max(self.test_segments, key=lambda s: (s.seq_len, s.num_pairs))
        for segment in self.test_segments:
            if segment.name == self.target:
                return segment
        raise ValueError(f"--target {self.target!r} is not a test segment ({', '.join(s.name for s in self.test_segments)})")


@dataclass(frozen=True)
class RunSpec:
    arch: str
    d_model: int
    state_size: int | None
    lr: float

    @property
    def name(self) -> str:
        state = "full" if self.state_size is None else f"n{self.state_size}"
        return f"{self.arch}-d{self.d_model}-{state}-lr{self.lr:.2e}"


def plan_runs(config: MQARSweepConfig) -> list[RunSpec]:
    """Every (arch, d_model, state size, lr); archs without a state knob get one run per (d_model, lr)."""
    runs = []
    for d_model in config.d_models:
        for arch in config.archs:
            if arch not in config.state_fields:
                raise ValueError(f"arch {arch!r} has no MQAR state-size field; known: "
                                 f"{', '.join(config.state_fields)} (add one with --state-field {arch}=FIELD)")
            sizes = config.state_sizes if config.state_fields[arch] else (None,)
            runs += [RunSpec(arch, d_model, size, lr) for size in sizes for lr in config.lrs]
    return runs


def run_config(spec: RunSpec, config: MQARSweepConfig, max_seconds: float):
    """The `slimkv train` run config of one MQAR run (model, optimizer and loop; data comes from MQARTrainSource)."""
    from ..train.config import ModelConfig, run_config_from_dict

    longest = max(s.seq_len for s in (*config.train_segments, *config.test_segments))
    micro = config.micro_batch_size or config.batch_size
    model = {"arch": spec.arch, "hidden_size": spec.d_model, "num_hidden_layers": config.num_layers,
             "vocab_size": config.vocab_size, "max_position_embeddings": longest, "window_size": config.window_size,
             "num_heads": config.num_heads or max(1, spec.d_model // 64)}
    extra = {}
    state_field = config.state_fields.get(spec.arch)
    if state_field and spec.state_size is not None:
        if state_field in {f.name for f in dataclasses.fields(ModelConfig)} - {"extra"}:
            model[state_field] = spec.state_size
        else:
            extra[state_field] = spec.state_size
    warmup = config.warmup_steps if config.warmup_steps >= 0 else min(100, config.steps // 10)
    data = {
        "model": {**model, "extra": extra},
        "data": {"source": "synthetic", "seq_len": max(s.seq_len for s in config.train_segments)},
        "optim": {"lr": spec.lr, "warmup_steps": warmup, "weight_decay": config.weight_decay},
        "train": {"name": spec.name, "out_dir": str(Path(config.out_dir) / "runs"), "steps": config.steps,
                  "batch_size": config.batch_size, "micro_batch_size": micro, "seed": config.seed,
                  "device": config.device, "precision": config.precision, "compile": config.compile,
                  "max_seconds": max_seconds, "checkpoint_every": 0, "keep_checkpoints": 1, "export_model": False},
        "eval": {"every": -1},
        "log": {"every": max(1, config.steps // 20), "tensorboard": False, "progress": False},
    }
    return run_config_from_dict(data)


def _state_bytes(model, seq_len: int, vocab_size: int) -> int:
    """Bytes of the inference cache after `seq_len` tokens (batch 1, the model's dtype)."""
    from ..models.memory import cache_nbytes

    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, seq_len), device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return cache_nbytes(out.past_key_values) if out.past_key_values is not None else 0


def train_and_score(spec: RunSpec, config: MQARSweepConfig, test_sets: dict, max_seconds: float = 0.0) -> dict:
    """Train one model on MQAR and score it on every test segment -> one JSON-able record."""
    from ..train.data_sources import DataSources
    from ..train.parallelize import unwrap
    from ..train.trainer import Trainer

    cfg = run_config(spec, config, max_seconds)
    source = MQARTrainSource(config.train_segments, config.batch_size, config.vocab_size, seed=config.seed,
                             power_a=config.power_a)
    trainer = Trainer(cfg, sources=DataSources(train=source, heldout=None, vocab_size=config.vocab_size))
    started = time.perf_counter()
    result = trainer.fit()
    train_seconds = time.perf_counter() - started
    model = unwrap(trainer.model).eval()
    autocast = torch.bfloat16 if trainer.bf16 else None
    accuracy = {name: query_accuracy(model, x, y, config.eval_batch_size, autocast)
                for name, (x, y) in test_sets.items()}
    # the same score on examples it trained on: far above the held-out one means it memorised (docs/evaluations.md)
    train_accuracy = {name: query_accuracy(model, x, y, config.eval_batch_size, autocast)
                      for name, (x, y) in source.training_examples().items()}
    record = {
        **dataclasses.asdict(spec), "seed": config.seed, "steps": result.steps,
        "train_seconds": round(train_seconds, 2),
        "final_loss": result.losses[-1] if result.losses else None,
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
        # the trainer counts every sequence as the longest train length; examples/s is exact
        "params": result.params, "examples_per_s": round(result.steps * config.batch_size / train_seconds, 1),
        "state_bytes": _state_bytes(model, config.target_segment().seq_len, config.vocab_size),
        "accuracy": accuracy,
        "train_accuracy": train_accuracy,
    }
    if not config.keep_runs:
        shutil.rmtree(trainer.run_dir / "checkpoints", ignore_errors=True)
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def best_runs(runs: list[dict], target: str) -> list[dict]:
    """Per (arch, d_model, state size): the learning rate with the best target accuracy, averaged over the seeds
    that ran it (parts run apart with --seed, docs/evaluations.md); `accuracy` is that mean, `seeds` and
    `accuracy_per_seed` say what it averages."""
    by_lr: dict[tuple, list[dict]] = {}
    for run in runs:
        by_lr.setdefault((run["arch"], run["d_model"], run["state_size"], run["lr"]), []).append(run)
    best: dict[tuple, tuple[float, list[dict]]] = {}
    for (arch, d_model, state_size, _), group in by_lr.items():
        group = sorted(group, key=lambda r: r.get("seed", 0))
        mean = sum(r["accuracy"][target] for r in group) / len(group)
        key = (arch, d_model, state_size)
        if key not in best or mean > best[key][0]:
            best[key] = (mean, group)
    rows = []
    for (arch, d_model, state_size), (mean, group) in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0],
                                                                                           kv[0][2] or 0)):
        rows.append({"arch": arch, "d_model": d_model, "state_size": state_size, "lr": group[0]["lr"],
                     "accuracy": mean, "seeds": [r.get("seed", 0) for r in group],
                     "accuracy_per_seed": [r["accuracy"][target] for r in group],
                     "state_bytes": group[0]["state_bytes"]})
    return rows


def run_sweep(config: MQARSweepConfig, on_run: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train and score every planned run; `on_run(i, n, record)` after each. Returns the report dictionary."""
    from ..machine import machine_header

    runs = plan_runs(config)
    target = config.target_segment()
    # every run's config is checked before the first one trains (unknown arch, bad sizes)
    for spec in runs:
        run_config(spec, config, 0.0)
    test = make_test_sets(config.test_segments, config.vocab_size, seed=config.seed + 1, power_a=config.power_a)
    started = time.perf_counter()
    records = []
    for i, spec in enumerate(runs):
        budget = 0.0
        if config.max_minutes > 0:
            left = 60 * config.max_minutes - (time.perf_counter() - started)
            if left <= 0:
                log.warning("time budget spent: %d of %d runs left out", len(runs) - i, len(runs))
                break
            budget = max(1.0, left / (len(runs) - i))
        record = train_and_score(spec, config, test, budget)
        records.append(record)
        if on_run is not None:
            on_run(i, len(runs), record)
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "header": machine_header(device),
        "config": _config_dict(config),
        "target": target.name,
        "planned_runs": len(runs),
        "seconds": round(time.perf_counter() - started, 1),
        "runs": records,
        "best": best_runs(records, target.name),
        "paper_fig1b": {arch: {str(n): acc for n, acc in points.items()} for arch, points in PAPER_FIG1B.items()},
    }


def merge_reports(reports: list[dict], target: str = "") -> dict:
    """One report from sweeps of the same protocol run apart (same target and test segments): every run, the best
    over learning rates recomputed (at `target`, another test segment, when given), and each part's header, config
    and seconds kept under "parts"."""
    if not reports:
        raise ValueError("nothing to merge: no MQAR reports given")
    tests = reports[0]["config"]["test_segments"]
    for report in reports[1:]:
        if report["target"] != reports[0]["target"] or report["config"]["test_segments"] != tests:
            raise ValueError(f"cannot merge MQAR sweeps of different protocols (target {report['target']!r} vs "
                             f"{reports[0]['target']!r}, or other test segments)")
    names = [Segment(**segment).name for segment in tests]
    if target and target not in names:
        raise ValueError(f"--target {target!r} is not a test segment of these sweeps ({', '.join(names)})")
    target = target or reports[0]["target"]
    # runs recorded before the seed was (commit 1f77e0d and older) ran with their part's --seed
    runs = [{**run, "seed": run.get("seed", report["config"].get("seed", 0))}
            for report in reports for run in report["runs"]]
    return {
        "header": reports[0]["header"], "config": reports[0]["config"], "target": target,
        "planned_runs": sum(r["planned_runs"] for r in reports),
        "seconds": max(r["seconds"] for r in reports),
        "runs": runs, "best": best_runs(runs, target), "paper_fig1b": reports[0]["paper_fig1b"],
        "parts": [{"header": r["header"], "config": r["config"], "seconds": r["seconds"], "runs": len(r["runs"])}
                  for r in reports],
    }


def sweep_to_folder(config: MQARSweepConfig, on_run: Callable[[int, int, dict], None] | None = None
                    ) -> tuple[dict, Path, Path]:
    """`run_sweep` (or, with config.merge, `merge_reports` of those folders), then mqar.json and mqar.png into
    config.out_dir (refused when it already holds a sweep)."""
    from ..io import write_json

    out = Path(config.out_dir)
    if (out / "mqar.json").exists():
        raise ValueError(f"{str(out)!r} already holds an MQAR sweep (mqar.json); choose another --out")
    if config.merge:
        missing = [d for d in config.merge if not (Path(d) / "mqar.json").is_file()]
        if missing:
            raise ValueError(f"--merge: no mqar.json in {', '.join(missing)}")
        report = merge_reports([json.loads((Path(d) / "mqar.json").read_text()) for d in config.merge],
                               target=config.target)
    else:
        report = run_sweep(config, on_run=on_run)
    json_path = write_json(out / "mqar.json", report, indent=1)
    plot_sweep(report, out / "mqar.png")
    return report, json_path, out / "mqar.png"


def _config_dict(config: MQARSweepConfig) -> dict:
    data = dataclasses.asdict(config)
    for key in ("train_segments", "test_segments"):
        data[key] = [dataclasses.asdict(s) for s in getattr(config, key)]
    return data


def plot_sweep(report: dict, path: str | Path) -> None:
    """Accuracy at the target segment vs state size: ours (solid) beside the paper's Fig. 1b (dashed, hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = report["best"]
    d_models = sorted({row["d_model"] for row in best}) or [None]
    fig, axes = plt.subplots(1, len(d_models), figsize=(6 * len(d_models), 4.5), squeeze=False)
    colors = {arch: f"C{i}" for i, arch in enumerate(["rodimus_plus", "rodimus", "mamba2", "gla", "llama"])}
    for ax, d_model in zip(axes[0], d_models):
        rows = [row for row in best if row["d_model"] == d_model]
        for arch in dict.fromkeys(row["arch"] for row in rows):
            points = sorted((row["state_size"], row["accuracy"]) for row in rows
                            if row["arch"] == arch and row["state_size"] is not None)
            color = colors.get(arch)
            if points:
                ax.plot(*zip(*points), marker="o", color=color, label=f"{ARCH_LABELS.get(arch, arch)} (slimkv)")
            for row in rows:  # the seeds' range where several seeds were averaged
                per_seed = row.get("accuracy_per_seed") or []
                if row["arch"] == arch and row["state_size"] is not None and len(per_seed) > 1:
                    # nudged sideways per kind (log2 axis) so that overlapping ranges stay readable
                    x = row["state_size"] * 2 ** (0.06 * (list(colors).index(arch) - 2) if arch in colors else 0)
                    ax.errorbar([x], [row["accuracy"]], yerr=[[row["accuracy"] - min(per_seed)],
                                                              [max(per_seed) - row["accuracy"]]],
                                color=color, capsize=4, linewidth=1.5)
            for row in rows:
                if row["arch"] == arch and row["state_size"] is None:
                    ax.axhline(row["accuracy"], color=color, linestyle=":",
                               label=f"{ARCH_LABELS.get(arch, arch)} (slimkv, full KV)")
        for arch, paper in report["paper_fig1b"].items():
            ns = sorted(int(n) for n in paper)
            ax.plot(ns, [paper[str(n)] for n in ns], linestyle="--", marker="o", markerfacecolor="none",
                    color=colors.get(arch), alpha=0.7, label=f"{ARCH_LABELS.get(arch, arch)} (paper Fig. 1b, 1024x256)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("state size n (mem_size / state / key dim)")
        ax.set_ylabel(f"MQAR accuracy at {report['target']}")
        ax.set_title(f"d_model {d_model}" if d_model is not None else "MQAR")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    header = report.get("header", {})
    # a merged sweep names every part's commit
    commits = dict.fromkeys((part["header"].get("git_commit") or "?")[:10] for part in report.get("parts", [])) \
        or {(header.get("git_commit") or "?")[:10]: None}
    seeds = " (bars: range over seeds)" if any(len(row.get("seeds", [])) > 1 for row in best) else ""
    fig.suptitle(f"MQAR (Zoology protocol), {report['target']}; {header.get('device_name', '')}\n"
                 f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}{seeds}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def steps_for_epochs(config: MQARSweepConfig, epochs: float) -> int:
    """Optimizer steps that walk the train set `epochs` times (Zoology trains 32 epochs)."""
    batches = sum(math.ceil(s.examples / config.batch_size) for s in config.train_segments)
    return max(1, round(batches * epochs))
