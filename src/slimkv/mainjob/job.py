"""The Quick-start job (`make run` / `slimkv main`): real corpus -> tiny Rodimus+ -> held-out perplexity against a
unigram baseline -> a sample -> report.json, loss.png and memory.png under runs/<name>/.

The whole job, data preparation and the final evaluation included, keeps to a wall-clock budget (`minutes`): the
number of training steps is re-planned after every step from the measured speed (mainjob/planner.py), the lr
schedule's cosine ends where the plan ends, and the held-out split is evaluated once, in full, at the end.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import ranged
from ..io import atomic_write_text
from ..machine import git_commit
from .planner import StepPlanner

PROMPT = "It was a truth that every reader knew:"
# held-out loss points on the loss plot: a quick evaluation (eval.max_batches batches) at these shares of training
PROGRESS_EVALS = (1 / 3, 2 / 3)
# plan to finish this many seconds before the budget runs out (timer noise, the first step's warm-up)
SAFETY_SECONDS = 20.0
# the final evaluation scores this many held-out tokens (16 evenly spaced spans), so that it costs the same on every
# machine load instead of a third of the budget on a busy one; 0 = the whole split
EVAL_TOKENS = 32_768
MEMORY_LENGTHS = (64, 256, 1024, 2048)


def heldout_sample(tokens, max_tokens: int, pieces: int = 16):
    """`pieces` evenly spaced contiguous spans of the held-out tokens, `max_tokens` in all (all of them if fewer)."""
    import numpy as np

    if max_tokens <= 0 or len(tokens) <= max_tokens:
        return np.asarray(tokens)
    span = max_tokens // pieces
    starts = np.linspace(0, len(tokens) - span, pieces).astype(np.int64)
    return np.concatenate([np.asarray(tokens[s:s + span]) for s in starts])


def text_bytes(tokenizer, tokens) -> int:
    """UTF-8 bytes of the text behind `tokens`, separators excluded (the bits-per-byte denominator)."""
    return len(tokenizer.decode(list(map(int, tokens)), skip_special_tokens=True).encode("utf-8"))


def measure_cache_bytes(model, vocab_size: int, lengths: list[int]) -> list[int]:
    """Bytes held by the model's inference cache after a prefill of each length (counted, not estimated)."""
    from ..models.memory import cache_nbytes

    out = []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in lengths:
            ids = torch.randint(0, vocab_size, (1, n), generator=g)
            result = model(ids, use_cache=True, logits_to_keep=1)
            out.append(cache_nbytes(result.past_key_values))
    return out


def plot_loss(metrics: list[dict], unigram_ppl: float, heldout_ppl: float, path: Path, title: str,
              heldout_tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    held = [(m["step"], m["heldout_loss"]) for m in metrics if "heldout_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), lw=1.2, label="train loss")
    if held:
        ax.plot(*zip(*held), "o-", ms=4, label="held-out loss (eval batches)")
    ax.axhline(math.log(unigram_ppl), color="gray", ls="--",
               label=f"unigram baseline, same tokens (ppl {unigram_ppl:.0f})")
    ax.axhline(math.log(heldout_ppl), color="green", ls=":",
               label=f"final held-out, {heldout_tokens:,} tokens (ppl {heldout_ppl:.1f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_memory(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, color in (("model_bytes", "trained Rodimus+ (cache)", "C0"),
                              ("transformer_bytes", "same-size Transformer (KV cache)", "C3")):
        measured = [(r["tokens"], r[key]) for r in rows if r["measured"]]
        extrapolated = [(r["tokens"], r[key]) for r in rows if not r["measured"] or r is rows[-1]]
        ax.plot(*zip(*measured), "o-", color=color, label=f"{label}, measured")
        last_measured = measured[-1]
        ext = [last_measured] + [p for p in extrapolated if p[0] > last_measured[0]]
        if len(ext) > 1:
            ax.plot(*zip(*ext), "--", color=color, alpha=0.7, label=f"{label}, extrapolated")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("inference-state bytes (batch 1, float32)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class BudgetKeeper:
    """A trainer step callback: re-plans the run's length after every step, runs the progress evaluations, and
    shows an honest progress line (seconds of the job's budget used, steps done of the current plan, ETA)."""

    def __init__(self, planner: StepPlanner, job_start: float, budget_seconds: float, progress: bool):
        self.planner = planner
        self.job_start = job_start
        self.budget_seconds = budget_seconds
        self.last_time: float | None = None
        self.plans: list[dict] = []
        self.evals_done = 0
        self.bar = tqdm(total=round(budget_seconds), unit="s", desc="main job", disable=not progress,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of budget{postfix}",
                        dynamic_ncols=True)

    def start(self) -> None:
        """Call right before training starts: the first step's time is measured from here."""
        self.last_time = time.perf_counter()

    def __call__(self, trainer, step: int, loss: float) -> None:
        now = time.perf_counter()
        # the first step's time also holds the trainer's setup and warm-up: it only seeds the plan
        self.planner.observe_step(now - (self.last_time or self.job_start), provisional=step == trainer.start_step + 1)
        planned = self.planner.planned_steps(step, now)
        warmup = None
        if step == trainer.start_step + 1:
            # warm up over about a tenth of the first plan (the preset's 50 steps assume a longer run)
            warmup = min(50, max(5, planned // 10))
        trainer.set_total_steps(planned, warmup)
        if not self.plans or self.plans[-1]["steps"] != planned:
            self.plans.append({"after_step": step, "steps": planned,
                               "tokens_per_s": round(self.planner.tokens_per_s, 1)})
        if self.evals_done < len(PROGRESS_EVALS) and step >= PROGRESS_EVALS[self.evals_done] * planned \
                and step < planned:
            self.evals_done += 1
            started = time.perf_counter()
            heldout_loss = trainer.evaluate()
            if heldout_loss is not None:
                cfg = trainer.config
                tokens = cfg.eval.max_batches * cfg.train.batch_size * cfg.data.seq_len
                self.planner.observe_eval(tokens, time.perf_counter() - started)
                trainer.metrics.log(step, {"heldout_loss": heldout_loss, "heldout_ppl": math.exp(heldout_loss)})
        self.last_time = time.perf_counter()
        eta = self.planner.eta_seconds(step, planned)
        self.bar.n = min(self.bar.total, self.last_time - self.job_start)
        self.bar.set_postfix_str(f"step {step}/{planned} loss {loss:.3f} {self.planner.tokens_per_s:,.0f} tok/s "
                                 f"| ETA {int(eta // 60)}:{int(eta % 60):02d}", refresh=True)

    def close(self) -> None:
        self.bar.close()


@dataclass
class MainJobConfig:
    """`slimkv main`: the Quick-start job (`run_main_job`)."""

    # run name: outputs go to runs/NAME/
    name: str = "main"
    # wall-clock budget of the whole job in minutes, data preparation and the final evaluation included; the
    # training steps are planned from the measured speed
    minutes: float = ranged(10.0, gt=0)
    # data directory ("" = $SLIMKV_DATA or ./data)
    data_dir: str = ""
    # held-out tokens scored at the end, in 16 evenly spaced spans (0 = the whole split)
    eval_tokens: int = ranged(EVAL_TOKENS, ge=0)
    # --section.field=value overrides of the tiny preset, e.g. --data.files=my.txt (slimkv train --help lists them)
    overrides: list[str] = field(default_factory=list)


def run_main_job(job: MainJobConfig | None = None, progress: bool = True) -> dict:
    """Run the Quick-start job within `job.minutes` of wall clock (everything included); returns the report dict
    (also written to runs/<name>/report.json beside loss.png and memory.png)."""
    from ..data.corpus import heldout_description
    from ..data.prepare import prepare_data
    from ..data.shards import unigram_perplexity
    from ..eval.perplexity import perplexity
    from ..models.memory import transformer_kv_bytes
    from ..train.config import load_run_config, preset_path
    from ..train.factory import build_model, count_parameters
    from ..train.metrics import read_metrics
    from ..train.trainer import Trainer

    job = job or MainJobConfig()
    name, data_dir, overrides, eval_tokens = job.name, job.data_dir or None, tuple(job.overrides), job.eval_tokens
    if job.minutes <= 0:
        raise ValueError(f"the time budget must be positive, got {job.minutes} minutes")
    start = time.perf_counter()
    budget = job.minutes * 60
    deadline = start + budget - SAFETY_SECONDS
    # the trainer gets a generous step count and the full budget as a backstop; the planner sets the real length
    config = load_run_config(preset_path("tiny"), [
        f"--train.name={name}", "--train.steps=1000000", f"--train.max_seconds={budget}", "--optim.warmup_steps=10",
        "--eval.every=-1", "--eval.max_batches=1", "--train.checkpoint_every=0", "--log.every=1",
        "--log.progress=false", *([f"--data.data_dir={data_dir}"] if data_dir else []), *overrides])
    cfg = config.data
    data = prepare_data(cfg.resolved_data_dir(), vocab_size=cfg.tokenizer_vocab_size, seq_len=cfg.seq_len,
                        tokenizer=cfg.tokenizer or None, progress=progress, files=cfg.files or None,
                        text_field=cfg.text_field, heldout_fraction=cfg.heldout_fraction)
    prepared = time.perf_counter()
    scored = heldout_sample(data.tokens("heldout"), eval_tokens)
    memory_tokens = 2 * sum(n for n in MEMORY_LENGTHS if n <= config.model.max_position_embeddings)
    planner = StepPlanner(deadline=deadline, tokens_per_step=config.train.batch_size * cfg.seq_len,
                          eval_tokens=len(scored) + memory_tokens)
    keeper = BudgetKeeper(planner, start, budget, progress)
    trainer = Trainer(config, callbacks=(keeper,))
    keeper.start()
    try:
        result = trainer.fit()
    finally:
        keeper.close()
    trained = time.perf_counter()
    run_dir = Path(result.run_dir)
    model_dir = run_dir / "model"

    from transformers import AutoModelForCausalLM

    import slimkv  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = data.load_tokenizer()
    heldout = torch.cat([torch.tensor([data.eos_id]), torch.from_numpy(scored.astype("int64"))])
    num_bytes = data.num_bytes("heldout") if len(scored) == len(data.tokens("heldout")) else \
        text_bytes(tokenizer, scored)
    ppl = perplexity(model, heldout, num_bytes, seq_len=cfg.seq_len, progress=progress)
    evaluated = time.perf_counter()
    # the baseline on exactly the scored tokens
    unigram = unigram_perplexity(data.tokens("train"), scored, data.vocab_size)

    torch.manual_seed(0)
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        # the saved generation_config carries use_cache, eos and pad (mainjob relies on the export being complete)
        out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=60,
                             do_sample=True, temperature=0.8, top_k=50)
    sample = tokenizer.decode(out[0, prompt_ids.shape[1]:], skip_special_tokens=True)

    # inference memory: counted after real prefills up to the position limit, then extended by the exact formula
    limit = model.config.max_position_embeddings
    measured_lengths = [n for n in MEMORY_LENGTHS if n <= limit]
    llama_cfg = load_run_config(preset_path("tiny"), ["--model.arch=llama"]).model
    llama = build_model(llama_cfg, data.vocab_size, seed=0).eval()
    ours = measure_cache_bytes(model, data.vocab_size, measured_lengths)
    theirs = measure_cache_bytes(llama, data.vocab_size, measured_lengths)
    lc = llama.config
    rows = [{"tokens": n, "model_bytes": a, "transformer_bytes": b, "measured": True}
            for n, a, b in zip(measured_lengths, ours, theirs)]
    for n in (8192, 32768, 131072):
        kv = transformer_kv_bytes(lc.num_hidden_layers, lc.num_key_value_heads,
                                  lc.hidden_size // lc.num_attention_heads, n, bytes_per_element=4)
        rows.append({"tokens": n, "model_bytes": ours[-1], "transformer_bytes": kv, "measured": False})

    metrics = read_metrics(run_dir / "metrics.jsonl")
    params = count_parameters(model)
    plot_loss(metrics, unigram, ppl.token_ppl, run_dir / "loss.png",
              f"tiny Rodimus+ ({params['total'] / 1e6:.1f}M params, {result.tokens_seen / 1e6:.2f}M tokens)",
              ppl.tokens)
    plot_memory(rows, run_dir / "memory.png", "Inference memory: trained Rodimus+ vs same-size Transformer")
    finished = time.perf_counter()
    import transformers

    report = {
        "heldout_ppl": ppl.token_ppl,
        "heldout_bits_per_byte": ppl.bits_per_byte,
        "heldout_tokens": ppl.tokens,
        "heldout_split_tokens": int(data.shard_meta["heldout"]["num_tokens"]),
        "unigram_ppl": unigram,
        "ppl_ratio_to_unigram": ppl.token_ppl / unigram,
        "tokens_seen": result.tokens_seen,
        "steps": result.steps,
        "params": params,
        "transformer_baseline_params": count_parameters(llama),
        "train_tokens_per_s": result.tokens_per_s,
        "final_train_loss": result.losses[-1] if result.losses else None,
        "prompt": PROMPT,
        "sample": sample,
        "memory": rows,
        "model": model.config.to_dict(),
        "heldout_split": (heldout_description() if not cfg.files else data.corpus.manifest["heldout_rule"])
        + (f"; scored: {len(scored):,} of its tokens, 16 evenly spaced spans" if len(scored) < len(
            data.tokens("heldout")) else "; scored: all of it"),
        "budget_seconds": budget,
        "wall_seconds": finished - start,
        "seconds": {"prepare_data": round(prepared - start, 1), "train": round(trained - prepared, 1),
                    "final_eval": round(evaluated - trained, 1), "after": round(finished - evaluated, 1)},
        "plan": {"first_steps": keeper.plans[0]["steps"] if keeper.plans else None, "final_steps": result.steps,
                 "changes": len(keeper.plans), "history": _thin(keeper.plans, 20)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "cpu": platform.processor(),
                    "threads": torch.get_num_threads(), "load_average": _load_average(), "commit": git_commit()},
    }
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _thin(items: list, keep: int) -> list:
    """About `keep` evenly spaced items, the first and the last always among them."""
    if len(items) <= keep:
        return list(items)
    every = len(items) / (keep - 1)
    return [items[round(i * every)] for i in range(keep - 1)] + [items[-1]]


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
