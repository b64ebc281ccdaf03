"""The RecurFormer comparison of docs/recurformer.md: original, control and converted variants at one cache budget.

    results = run_experiments(ExperimentPlan(out="runs/recurformer/cpu"))     # slimkv recurformer experiment

Every step is a library call the commands also make (profile, convert_folder, train_recurformer with the preset and
overrides) and is skipped when its output exists, so an interrupted run continues. Variants (ratio = replaced share
of KV units):

    original        the pretrained model             control     Stage B of the original, same data and steps
    window          streaming heads (sinks + window) on the recency-ranked units, Stage B
    mamba2, ddts    recurrent branches on the recency-ranked units, Stage A then Stage B
    window_mamba2   the streaming heads plus a Mamba2 state for what leaves the window (layers/branch_window_mamba2.py),
                    Stage A (the Mamba2 part only) then Stage B; not in the default plan
    random, learned the selection ablations (random units; DuoAttention-style learned gates), same branch and
                    training as `selection_branch`

Each model gets held-out perplexity (corpus held-out split, disjoint windows), passkey retrieval
(slimkv.eval.niah), HashHop exact match, and counted cache bytes. Writes results.json (with the machine and commit
header), results.md and PNGs.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional, get_args

import torch

from ..config import check_ranges, did_you_mean, ranged, setting
from ..device import resolve_device
from ..io import atomic_write, atomic_write_text
from .select import fraction_field

logger = logging.getLogger(__name__)

RECURRENT = ("mamba2", "ddts", "window_mamba2")
# the selection ablations: their variant name is the selection rule, their branch plan.selection_branch
SELECTIONS = ("random", "learned")


Variant = Literal["original", "control", "window", "mamba2", "ddts", "window_mamba2", "random", "learned"]
VARIANTS: tuple[str, ...] = get_args(Variant)
# what a plan runs unless --variants says otherwise: the paper's branches, the baselines and the ablations
DEFAULT_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v != "window_mamba2")


@dataclass
class ExperimentPlan:
    """`slimkv recurformer experiment`: which variants to build, train and evaluate, and how (`run_experiments`)."""

    # output folder: profile, conversions, training runs, results.json / results.md / results.png
    out: str = setting("runs/recurformer/cpu", metavar="DIR")
    # the pretrained model folder ("" = slimkv fetch smollm2)
    model: str = setting("", metavar="DIR")
    # share of KV units every converted variant replaces
    ratio: float = fraction_field(0.5)
    # training config of every run (a YAML file or a shipped preset name, recurformer/config.py)
    preset: str = "smollm2-cpu"
    # variants to run, in order, from original, control, window, mamba2, ddts, window_mamba2, random, learned
    # (module docstring; every one but window_mamba2 by default)
    variants: tuple[Variant, ...] = setting(DEFAULT_VARIANTS, metavar="VARIANT,...")
    # the branch of the random and learned selections
    selection_branch: str = "mamba2"
    # window and window_mamba2: previous tokens each replaced head sees in full
    attn_window: int = ranged(64, ge=1)
    # window and window_mamba2: first tokens each replaced head always sees (sinks)
    attn_sinks: int = ranged(4, ge=0)
    # mamba2, window_mamba2 and ddts branches (the selections' too): state size N per replaced query head (none:
    # the head dim; ddts: its n, 64); a smaller one keeps the saving where the KV cache is small to begin with
    # (few KV heads: Qwen2.5)
    state_size: Optional[int] = ranged(None, ge=1)
    # optimizer steps of the gates run (the learned selection)
    gate_steps: int = ranged(10, ge=1)
    # optimizer steps of Stage A (recurrent branches only)
    steps_a: int = ranged(10, ge=1)
    # optimizer steps of Stage B (every trained variant and the control)
    steps_b: int = ranged(10, ge=1)
    # sequences per training step
    batch_size: int = ranged(2, ge=1)
    # tokens per training sequence
    seq_len: int = ranged(256, ge=16)
    # further --section.field=value overrides for every training run (on the command line: the dotted items)
    overrides: tuple[str, ...] = ()
    # calibration sequences of the recency profile
    profile_sequences: int = ranged(16, ge=1)
    # tokens per calibration sequence (longer than the window k = 32)
    profile_seq_len: int = ranged(512, gt=32)
    # held-out tokens of the perplexity (disjoint windows of eval_seq_len)
    eval_tokens: int = ranged(4096, ge=1)
    # tokens per perplexity window
    eval_seq_len: int = ranged(512, ge=2)
    # passkey retrieval: context lengths in tokens
    niah_lengths: tuple[int, ...] = setting((1024, 2048, 4096), ge=1)
    # passkey retrieval: needle depths, as fractions of the context
    niah_depths: tuple[float, ...] = setting((0.25, 0.75), ge=0, le=1)
    # HashHop problems per model (0 = skip HashHop)
    hashhop: int = ranged(8, ge=0)
    # context lengths at which the cache bytes are counted
    cache_lengths: tuple[int, ...] = setting((4096, 16384), ge=1)
    # held-out loss by position (eval/length.py): sequences of this many held-out tokens, scored whole, so the
    # perplexity past the training length shows (0 = not measured; at most --eval-tokens)
    length_context: int = ranged(0, ge=0)
    # the same: a converted model walks each sequence in chunks of this many tokens with its cache carried
    length_chunk: int = ranged(2048, ge=1)
    # decode speed: ms per generated token after a prompt of this many tokens (0 = not measured)
    decode_context: int = ranged(0, ge=0)
    # decode speed: tokens generated per timing
    decode_tokens: int = ranged(64, ge=2)
    # where the evaluations run: auto = cuda when present
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # instead of running: merge the results.json of these experiment folders (variants run side by side in
    # separate processes with the same plan, e.g. on one GPU) into --out: one table, one PNG
    merge: tuple[str, ...] = setting((), metavar="DIR,...")


def check_plan(plan: ExperimentPlan) -> None:
    """Ranges, the branch name, and the training preset with the overrides, before any work (one line each)."""
    from ..layers.branches import branch_names
    from .config import load_recurformer_config

    check_ranges(plan)
    if not plan.variants:
        raise ValueError("--variants is empty: name at least one of " + ", ".join(VARIANTS))
    if plan.selection_branch not in branch_names():
        raise ValueError(f"--selection-branch must be one of {list(branch_names())}, got {plan.selection_branch!r}"
                         + did_you_mean(plan.selection_branch, branch_names()))
    if plan.length_context > plan.eval_tokens:
        raise ValueError(f"--length-context {plan.length_context} needs at least as many held-out tokens: "
                         f"--eval-tokens is {plan.eval_tokens}")
    # every run loads the preset with these overrides after its own; a bad one fails now, not after the profile
    load_recurformer_config(plan.preset, ["--recurformer.student=checked-later", *plan.overrides])


def _train(plan: ExperimentPlan, name: str, student: Path, stage: str, steps: int, control: bool = False) -> Path:
    from .config import load_recurformer_config
    from .train import train_recurformer

    run_dir = Path(plan.out) / "runs" / name
    if (run_dir / "recurformer.json").is_file():
        return run_dir / "model"
    overrides = [f"--recurformer.stage={stage}", f"--recurformer.student={student}", f"--recurformer.control={control}",
                 f"--train.name={name}", f"--train.out_dir={Path(plan.out) / 'runs'}", f"--train.steps={steps}",
                 f"--train.batch_size={plan.batch_size}", f"--train.micro_batch_size={plan.batch_size}",
                 f"--data.seq_len={plan.seq_len}", "--log.progress=false", *plan.overrides]
    config = load_recurformer_config(plan.preset, overrides)
    # a run stopped part-way (SIGTERM saves a checkpoint, slimkv/train/trainer.py) continues where it stopped
    resume = True if any((run_dir / "checkpoints").glob("step-*")) else None
    logger.info("training %s: stage %s, %d steps%s", name, stage, steps, " (resuming)" if resume else "")
    train_recurformer(config, resume=resume, progress=False)
    return run_dir / "model"


def _convert(plan: ExperimentPlan, name: str, source: Path, mixer: str, select: str, profile: Path,
             gates: Path | None) -> Path:
    from .convert import RecurFormerConvertConfig, convert

    out = Path(plan.out) / "converted" / name
    if not (out / "conversion.json").is_file():
        convert(RecurFormerConvertConfig(model=str(source), out=str(out), ratio=plan.ratio, mixer=mixer,
                                         select=select, profile=str(profile), gates=str(gates) if gates else None,
                                         attn_window=plan.attn_window, attn_sinks=plan.attn_sinks,
                                         state_size=plan.state_size),
                progress=False)
    return out


def iter_variants(plan: ExperimentPlan, source: Path):
    """Profile, gates, conversions and training of every variant, in plan order: yields (variant, model folder) as
    each one is ready, so the caller can evaluate it before the next one trains (a run cut short keeps its rows)."""
    from .profile import ProfileConfig
    from .profile import profile as profile_units

    out = Path(plan.out)
    profile = out / "profile.json"
    if not profile.is_file():
        profile_units(ProfileConfig(model=str(source), num_sequences=plan.profile_sequences,
                                    seq_len=plan.profile_seq_len, json=str(profile), png=str(out / "profile.png"),
                                    device=plan.device),
                      progress=False)
    gates = None
    for variant in plan.variants:
        if variant == "original":
            yield variant, source
        elif variant == "control":
            yield variant, _train(plan, "control", source, "B", plan.steps_b, control=True)
        else:
            mixer = plan.selection_branch if variant in SELECTIONS else variant
            select = variant if variant in SELECTIONS else "recency"
            if select == "learned" and gates is None:
                gates = _train(plan, "gates", source, "gates", plan.gate_steps) / "gates.json"
            folder = _convert(plan, variant, source, mixer, select, profile, gates)
            if mixer in RECURRENT:
                folder = _train(plan, f"{variant}-A", folder, "A", plan.steps_a)
            yield variant, _train(plan, f"{variant}-B", folder, "B", plan.steps_b)


def evaluate_folder(folder: Path, plan: ExperimentPlan, heldout: torch.Tensor, documents: list[str]) -> dict:
    """Perplexity, passkey retrieval, HashHop, counted cache bytes and (plan.decode_context > 0) decode ms/token
    of one model folder, in float32 on plan's device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import models  # noqa: F401  (registers RecurFormer with the Auto classes)
    from ..eval.length import loss_by_position
    from ..eval.niah import NIAHConfig, run_niah
    from ..eval.perplexity import token_nll
    from ..eval.speed import decode_ms_per_token
    from . import hashhop
    from .convert import cache_bytes

    device = resolve_device(plan.device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    started = time.perf_counter()
    with torch.no_grad():
        nll, count = token_nll(model, heldout.to(device), seq_len=plan.eval_seq_len, stride=plan.eval_seq_len,
                               mode="sliding")
    row = {"ppl": math.exp(nll / count), "ppl_tokens": count, "ppl_seconds": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    niah = run_niah(model, tokenizer, documents, NIAHConfig(lengths=plan.niah_lengths, depths=plan.niah_depths,
                                                            trials=1, max_new_tokens=8))
    row["niah"] = {"lengths": niah.lengths, "depths": niah.depths, "accuracy": niah.accuracy,
                   "mean": niah.mean_accuracy, "seconds": round(time.perf_counter() - started, 1)}
    if plan.hashhop:
        problems = hashhop.make_examples(plan.hashhop, seed=123, num_chains=3, hops=2)
        row["hashhop_exact_match"] = hashhop.evaluate(model, tokenizer, problems)["exact_match"]
    row["cache_bytes"] = {str(T): {"float32": cache_bytes(model, T),
                                   "bfloat16": cache_bytes(model, T, dtype=torch.bfloat16)} for T in plan.cache_lengths}
    if plan.length_context:
        started = time.perf_counter()
        curve = loss_by_position(model, heldout, length=plan.length_context, chunk=plan.length_chunk,
                                 bin_size=max(1, plan.length_context // 64), max_sequences=4, batch=1,
                                 trained_length=plan.seq_len)
        row["length"] = {**curve.as_dict(), "seconds": round(time.perf_counter() - started, 1)}
    if plan.decode_context:
        # bf16 weights, as served; the prompt is held-out text cycled to the context length
        model = model.to(torch.bfloat16)
        ids = heldout[:-1].repeat(plan.decode_context // (heldout.numel() - 1) + 1)[: plan.decode_context]
        with torch.no_grad():
            speed = decode_ms_per_token(model, ids[None].to(device), plan.decode_tokens, repeats=3, warmup=True)
        row["decode"] = {"context": plan.decode_context, "dtype": "bfloat16", "device": device.type,
                         **{k: speed[k] for k in ("ms_per_token", "ms_per_token_runs", "prefill_s")}}
    train = Path(folder).parent / "recurformer.json"
    if train.is_file():
        record = json.loads(train.read_text())
        row["train"] = {k: record[k] for k in ("stage", "steps", "tokens", "seconds", "losses")}
    return row


# plan fields that may differ between the parts of a merge: everything else must match
# (the length curve too: it only adds an evaluation, so a part without it merges with its rows lacking one)
_PER_PART = ("out", "variants", "merge", "device", "length_context", "length_chunk")
# plan fields only some variants read: two parts must agree on one only when both ran a reader (a part that runs
# the learned selection alone may train its gates longer than the part that scored the original)
_READ_BY = {"gate_steps": ("learned",), "selection_branch": SELECTIONS}


def _reads(part: dict, key: str) -> bool:
    return key not in _READ_BY or any(v in part["rows"] for v in _READ_BY[key])


def merge_experiments(plan: ExperimentPlan) -> dict:
    """One results folder from experiments run apart with the same plan: rows in VARIANTS order (a variant that
    several parts scored, such as the original, from the first part, the others' perplexities kept under
    "duplicates"), the runs' training records copied (recurformer.json, metrics.jsonl: the loss curves; no
    weights), results.json / .md / .png written to plan.out, which must not hold results yet."""
    import shutil

    out = Path(plan.out)
    if (out / "results.json").exists():
        raise ValueError(f"{str(out)!r} already holds results (results.json); choose another --out")
    parts = []
    for folder in plan.merge:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise ValueError(f"--merge: no results.json in {folder}")
        parts.append((Path(folder), json.loads(path.read_text())))
    first = parts[0][1]
    # a field added since a part ran (attn_window, 2026-12-03) counts as its default there
    defaults = json.loads(json.dumps(asdict(ExperimentPlan())))
    for i, (folder, part) in enumerate(parts):
        for other_dir, other in parts[:i]:
            for key in sorted(set(other["plan"]) | set(part["plan"])):
                if key in _PER_PART or not (_reads(part, key) and _reads(other, key)):
                    continue
                mine, theirs = (p["plan"].get(key, defaults.get(key)) for p in (part, other))
                if mine != theirs:
                    raise ValueError(f"--merge: {folder} ran another plan than {other_dir} ({key}: {mine!r} vs "
                                     f"{theirs!r})")
    # the merged plan: the first part's, a variant-read field from the first part that ran a reader
    plan_fields = dict(first["plan"])
    for key in _READ_BY:
        readers = [part for _, part in parts if _reads(part, key)]
        if readers:
            plan_fields[key] = readers[0]["plan"].get(key, defaults.get(key))
    rows, duplicates = {}, {}
    for variant in VARIANTS:
        # each row keeps the commit it was scored at: the parts of a merge may have run apart by sessions
        scored = [(folder, {**part["rows"][variant],
                            "commit": part["rows"][variant].get("commit", part["header"].get("git_commit"))})
                  for folder, part in parts if variant in part["rows"]]
        if scored:
            rows[variant] = scored[0][1]
            if len(scored) > 1:
                duplicates[variant] = {str(folder): row["ppl"] for folder, row in scored}
    if not rows:
        raise ValueError("--merge: the folders hold no scored variant")
    for folder, _ in parts:
        for record in sorted((folder / "runs").glob("*/recurformer.json")):
            target = out / "runs" / record.parent.name
            if target.exists():
                continue  # the same run (the control, say) in two parts: the first one's record
            target.mkdir(parents=True)
            for name in ("recurformer.json", "metrics.jsonl"):
                if (record.parent / name).is_file():
                    shutil.copy2(record.parent / name, target / name)
    results = {
        "rows": rows,
        "plan": {**plan_fields, "out": str(out), "variants": list(rows), "merge": [str(f) for f, _ in parts]},
        "header": first["header"], "source": first["source"],
        "merged_from": {str(folder): list(part["rows"]) for folder, part in parts}, "duplicates": duplicates,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_page(results, out)
    return results


def run_experiments(plan: ExperimentPlan) -> dict:
    """Build, train and evaluate every variant of `plan` (skipping the steps whose outputs exist); returns the
    results (what results.json holds). With plan.merge: `merge_experiments` instead."""
    if plan.merge:
        return merge_experiments(plan)
    from transformers import AutoConfig, AutoTokenizer

    from ..machine import machine_header
    from ..data import fetch_corpus, read_split_documents
    from ..data.pretrained import fetch_smollm2
    from ..eval.perplexity import encode_text

    check_plan(plan)
    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(plan.model) if plan.model else fetch_smollm2()
    device = resolve_device(plan.device)
    limit = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None)
    if plan.decode_context and limit and plan.decode_context + plan.decode_tokens > limit:
        # checked before any training: the converted models refuse prompts past the source's position limit
        raise ValueError(f"--decode-context {plan.decode_context} + --decode-tokens {plan.decode_tokens} exceeds "
                         f"the model's max_position_embeddings={limit}; use at most {limit - plan.decode_tokens}")
    if plan.length_context and limit and plan.length_context > limit:
        raise ValueError(f"--length-context {plan.length_context} exceeds the model's max_position_embeddings="
                         f"{limit}; use at most {limit}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    documents = read_split_documents(fetch_corpus(), "heldout")
    text = "\n\n".join(documents)
    heldout = encode_text(tokenizer, text[: plan.eval_tokens * 8], tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    heldout = heldout[: plan.eval_tokens + 1]
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    # rows scored by an earlier invocation keep that one's commit; the header becomes this one's
    for row in results["rows"].values():
        row.setdefault("commit", results.get("header", {}).get("git_commit"))
    results.update(plan=asdict(plan), header=machine_header(device), source=str(source))
    for variant, folder in iter_variants(plan, source):
        if variant not in results["rows"]:
            logger.info("evaluating %s (%s)", variant, folder)
            results["rows"][variant] = {"folder": str(folder), "commit": results["header"].get("git_commit"),
                                        **evaluate_folder(folder, plan, heldout, documents)}
            atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    write_page(results, out)
    return results


def has_page(results: dict) -> bool:
    """Whether the results can make a table and PNG: the cache saving and the passkey lengths are read from the
    original's row. A part without it (one process of several side by side on one GPU) cannot; its results.json
    is complete, and `--merge` with a part that scored the original makes the page."""
    return "original" in results["rows"]


def write_page(results: dict, out: Path) -> bool:
    """results.md and results.png into `out` when `has_page`; False (nothing written) otherwise."""
    if not has_page(results):
        logger.info("no results.md / results.png in %s: they compare with the original, which this part did not "
                    "score; merge it with a part that did (--merge)", out)
        return False
    atomic_write_text(out / "results.md", table(results) + "\n")
    plot(results, out / "results.png")
    return True


def table(results: dict) -> str:
    rows = results["rows"]
    control = rows.get("control", rows.get("original"))["ppl"]
    full = {T: rows["original"]["cache_bytes"][T]["bfloat16"] for T in rows["original"]["cache_bytes"]}
    lengths = list(full)
    header = ["model", "held-out ppl", "vs control",
              "passkey " + "/".join(_tokens_label(n) for n in rows["original"]["niah"]["lengths"]),
              "HashHop EM"] + [f"cache {_tokens_label(T)} bf16 (MiB)" for T in lengths] + \
             [f"saved at {_tokens_label(lengths[0])}", "train tokens"]
    length = next((row["length"] for row in rows.values() if "length" in row), None)
    if length:
        header.append("ppl at positions " + "/".join(f"{_tokens_label(lo) if lo else 0}-{_tokens_label(hi)}"
                                                      for lo, hi, _ in length_bands(length)))
    decode = next((row["decode"]["context"] for row in rows.values() if "decode" in row), None)
    if decode:
        header.append(f"decode ms/token after {decode:,} tokens")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        niah = "/".join(f"{sum(cells) / len(cells):.2f}" for cells in row["niah"]["accuracy"])
        cache = [f"{row['cache_bytes'][T]['bfloat16'] / 2**20:.1f}" for T in lengths]
        saved = 1 - row["cache_bytes"][lengths[0]]["bfloat16"] / full[lengths[0]]
        hh = row.get("hashhop_exact_match")
        cells = [name, f"{row['ppl']:.2f}", f"{100 * (row['ppl'] / control - 1):+.1f}%", niah,
                 "-" if hh is None else f"{hh:.2f}", *cache, f"{100 * saved:.1f}%", str(_trained_tokens(results, name))]
        if length:
            cells.append("/".join(f"{ppl:.2f}" for *_, ppl in length_bands(row["length"])) if "length" in row else "-")
        if decode:
            cells.append(f"{row['decode']['ms_per_token']:.2f}" if "decode" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tokens_label(n: int | str) -> str:
    """4096 -> "4K", 1000 -> "1000": a length as the tables and plots name it."""
    n = int(n)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _trained_tokens(results: dict, name: str) -> int:
    """Tokens of every training run behind a variant (gates, Stage A and Stage B)."""
    total = 0
    for run in Path(results["plan"]["out"], "runs").glob("*/recurformer.json"):
        run_name = run.parent.name
        if run_name == name or run_name.startswith(f"{name}-") or (name == "learned" and run_name == "gates"):
            total += json.loads(run.read_text())["tokens"]
    return total


def loss_curve(run_dir: Path) -> dict[int, float]:
    """{step: training loss} of one run: every step of its last process (recurformer.json, which a resumed run
    writes for the steps after its resume point only), the logged steps of metrics.jsonl before those."""
    record = json.loads((run_dir / "recurformer.json").read_text())
    losses = record["losses"]
    first = record["steps"] - len(losses) + 1
    curve: dict[int, float] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row and row["step"] < first:
                curve[row["step"]] = row["loss"]
    curve.update({first + i: loss for i, loss in enumerate(losses)})
    return dict(sorted(curve.items()))


def length_bands(curve: dict) -> list[tuple[int, int, float]]:
    """(start, end, perplexity) of a length curve (`LengthCurve.as_dict`) over the first eighth of its positions,
    up to the half, and the second half: near, middle and far context."""
    L = curve["length"]
    edges = [0, max(1, L // 8), max(2, L // 2), L]
    bands = []
    for lo, hi in zip(edges, edges[1:]):
        losses = [loss for start, loss in zip(curve["positions"], curve["loss"]) if lo <= start < hi]
        if losses:
            bands.append((lo, hi, math.exp(sum(losses) / len(losses))))
    return bands


def scored_commits(results: dict) -> list[str]:
    """The commits the rows were scored at, in row order without repeats (a merge's rows record theirs; an
    unmerged run's are its header's)."""
    default = str(results["header"].get("git_commit"))
    return list(dict.fromkeys(str(row.get("commit", default)) for row in results["rows"].values()))


def plot(results: dict, path: Path) -> None:
    """Perplexity vs cache at the first length, passkey accuracy per length, the training curves, and (rows with
    a length curve) perplexity by position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    first = next(iter(rows["original"]["cache_bytes"]))
    with_length = [name for name, row in rows.items() if "length" in row]
    fig, axes = plt.subplots(1, 4 if with_length else 3, figsize=(20 if with_length else 15, 4.2))
    ax_ppl, ax_niah, ax_loss = axes[:3]
    # one colour per variant in all three panels (a run "mamba2-B" is variant "mamba2")
    colours = {name: f"C{i}" for i, name in enumerate(rows)}
    for i, (name, row) in enumerate(rows.items()):
        x = row["cache_bytes"][first]["bfloat16"] / 2**20
        ax_ppl.scatter(x, row["ppl"], s=30, color=colours[name])
        ax_ppl.annotate(name, (x, row["ppl"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        lengths = row["niah"]["lengths"]
        # each line offset by 0.012 so that models with the same accuracy stay visible
        ax_niah.plot(lengths, [sum(c) / len(c) + 0.012 * (i - len(rows) / 2) for c in row["niah"]["accuracy"]],
                     marker="o", label=name, alpha=0.85, color=colours[name])
    for run in sorted(Path(results["plan"]["out"], "runs").glob("*-B/recurformer.json")) + sorted(
            Path(results["plan"]["out"], "runs").glob("control/recurformer.json")):
        curve = loss_curve(run.parent)
        variant = run.parent.name.removesuffix("-B")
        ax_loss.plot(list(curve), list(curve.values()), label=run.parent.name, color=colours.get(variant))
    ax_ppl.set(xlabel=f"decode cache at {_tokens_label(first)} tokens (MiB, bf16)", ylabel="held-out perplexity",
               yscale="log", title="quality vs cache budget")
    ax_ppl.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_ppl.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax_niah.set(xlabel="context length (tokens)", ylabel="passkey exact match", ylim=(-0.08, 1.08), xscale="log",
                title="passkey retrieval (lines offset slightly)")
    niah_lengths = rows["original"]["niah"]["lengths"]
    ax_niah.set_xticks(niah_lengths, [_tokens_label(n) for n in niah_lengths])
    ax_niah.minorticks_off()
    ax_loss.set(xlabel="Stage B step", ylabel="training loss (CE + KL)", title="Stage B loss curves")
    if with_length:
        ax_len = axes[3]
        for name in with_length:
            curve = rows[name]["length"]
            ax_len.plot(curve["positions"], [math.exp(v) for v in curve["loss"]], label=name, color=colours[name])
        trained = rows[with_length[0]]["length"].get("trained_length")
        if trained:
            ax_len.axvline(trained, color="gray", ls=":", lw=1, label=f"training length {trained:,}")
        ax_len.set(xlabel="position in the sequence (tokens)", ylabel="held-out perplexity", yscale="log",
                   title="perplexity by position (past the training length)")
        ax_len.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax_len.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    for ax in (ax_niah, ax_loss, *axes[3:]):
        if ax.get_legend_handles_labels()[0]:  # a results.json without its runs/ folder has no loss curves
            ax.legend(fontsize=7)
    commits = scored_commits(results)
    fig.suptitle(f"RecurFormer on {Path(results['source']).name}, ratio {results['plan']['ratio']} "
                 f"(commit{'s' if len(commits) > 1 else ''} {', '.join(c[:12] for c in commits)})", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)
