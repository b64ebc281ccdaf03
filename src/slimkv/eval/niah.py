"""Needle in a haystack (passkey retrieval) over the project's real corpus, scored by exact match.

One prompt of exactly `length` tokens:

    <instruction> <haystack tokens ... NEEDLE ... haystack tokens> <question>

- the haystack is real text (a corpus split of `slimkv fetch corpus`, or any text), documents joined by blank
  lines and cycled when a split is shorter than the longest prompt;
- the needle ("The pass key is 58213. Remember it. 58213 is the pass key.") goes in at `depth` (0 = first
  haystack token, 1 = just before the question), moved back to the nearest sentence end so it never splits a word;
- the question ends with "The pass key is", and the model's greedy completion (through its own cache: one prefill,
  then one token per step) is correct when its first run of digits is exactly the pass key.

Works with every model whose forward takes `input_ids` and a cache (slimkv Rodimus / Rodimus+, RecurFormer, and
Hugging Face causal LMs); prompts are capped at the model's `max_position_embeddings`.
"""
from __future__ import annotations

import inspect
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from ..config import ranged, setting
from ..data.passkey import INSTRUCTION, NEEDLE, QUESTION, random_key
from ..data.passkey import encode as _encode

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_DEPTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class NIAHConfig:
    lengths: Sequence[int] = DEFAULT_LENGTHS
    # fractions of the haystack before the needle
    depths: Sequence[float] = DEFAULT_DEPTHS
    # prompts (different pass keys) per (length, depth) cell
    trials: int = 1
    key_digits: int = 5
    max_new_tokens: int = 8
    # feed the prompt in pieces of this many tokens, carrying the cache (0 = one forward)
    prefill_chunk: int = 0
    seed: int = 0


@dataclass
class NIAHRow:
    length: int
    depth: float
    trial: int
    key: str
    needle_position: int
    completion: str
    correct: bool


@dataclass
class NIAHResult:
    lengths: list[int]
    depths: list[float]
    # accuracy[i][j]: share of correct trials at lengths[i], depths[j]
    accuracy: list[list[float]]
    skipped_lengths: list[int]
    rows: list[NIAHRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_accuracy(self) -> float:
        cells = [a for row in self.accuracy for a in row]
        return sum(cells) / len(cells) if cells else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "mean_accuracy": self.mean_accuracy}


def exact_match(completion: str, key: str) -> bool:
    """The first run of digits in the completion is exactly the key."""
    found = re.search(r"\d+", completion)
    return found is not None and found.group(0) == key


class Haystack:
    """Token ids of real text, long enough for the longest prompt, with the positions where a sentence ends."""

    def __init__(self, tokenizer, documents: Sequence[str], num_tokens: int):
        documents = [d for d in documents if d.strip()]
        if not documents:
            raise ValueError("the haystack text is empty")
        ids: list[int] = []
        while len(ids) < num_tokens:
            for doc in documents:
                ids += _encode(tokenizer, doc.strip() + "\n\n")
                if len(ids) >= num_tokens:
                    break
        self.ids = ids[:num_tokens]
        # boundary b: the needle may go before token b when token b - 1 ends a sentence (or a paragraph)
        pieces = tokenizer.convert_ids_to_tokens(self.ids) if hasattr(tokenizer, "convert_ids_to_tokens") else None
        texts = [tokenizer.decode([i]) for i in self.ids] if pieces is None else \
            [tokenizer.convert_tokens_to_string([p]) for p in pieces]
        ends = [b + 1 for b, text in enumerate(texts) if text.rstrip().endswith((".", "!", "?", "\n")) or
                text.endswith("\n")]
        self.boundaries = np.array([0] + ends, dtype=np.int64)

    def cut(self, haystack_len: int, depth: float) -> tuple[list[int], list[int]]:
        """The first `haystack_len` tokens split at the sentence end at or before depth * haystack_len."""
        want = int(round(depth * haystack_len))
        allowed = self.boundaries[self.boundaries <= want]
        position = int(allowed[-1]) if len(allowed) else 0
        return self.ids[:position], self.ids[position:haystack_len]


def build_prompt(tokenizer, haystack: Haystack, length: int, depth: float, key: str) -> tuple[list[int], int]:
    """-> (prompt ids of exactly `length` tokens, index of the needle's first token)."""
    head = _encode(tokenizer, INSTRUCTION)
    needle = _encode(tokenizer, NEEDLE.format(key=key))
    question = _encode(tokenizer, QUESTION)
    haystack_len = length - len(head) - len(needle) - len(question)
    if haystack_len < 0:
        raise ValueError(f"a prompt of {length} tokens has no room for the haystack "
                         f"(instruction, needle and question take {length - haystack_len})")
    before, after = haystack.cut(haystack_len, depth)
    ids = head + before + needle + after + question
    return ids, len(head) + len(before)


def _cache_kwarg(model) -> str:
    """The name under which the model's forward takes its cache: `cache` (newer transformers) or
    `past_key_values` (slimkv models and older transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "past_key_values", None)
    return cache if cache is not None else getattr(out, "cache", None)


@torch.no_grad()
def greedy_complete(model, ids: Sequence[int], max_new_tokens: int, prefill_chunk: int = 0,
                    stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy new tokens after `ids`: the prompt is prefilled (in chunks carrying the cache if asked), then each
    new token is one forward of one token through the model's cache."""
    device = next(model.parameters()).device
    name = _cache_kwarg(model)
    prompt = torch.tensor([list(ids)], dtype=torch.long, device=device)
    chunk = prefill_chunk if prefill_chunk > 0 else prompt.shape[1]
    cache, out = None, None
    for start in range(0, prompt.shape[1], chunk):
        out = model(input_ids=prompt[:, start:start + chunk], use_cache=True, **({name: cache} if cache is not None else {}))
        cache = _cache_of(out)
    new: list[int] = []
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    for step in range(max_new_tokens):
        new.append(int(token))
        if new[-1] in stop_ids or step == max_new_tokens - 1:
            break
        out = model(input_ids=token, use_cache=True, **{name: cache})
        cache = _cache_of(out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return new


def position_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def run_niah(model, tokenizer, documents: Sequence[str], config: NIAHConfig,
             progress: Callable[[NIAHRow], None] | None = None) -> NIAHResult:
    """The length x depth grid; lengths beyond the model's position limit are skipped (and listed)."""
    if config.trials < 1 or config.max_new_tokens < 1:
        raise ValueError("niah needs trials >= 1 and max_new_tokens >= 1")
    if any(not 0.0 <= d <= 1.0 for d in config.depths):
        raise ValueError(f"depths must lie in [0, 1] (fractions of the haystack), got {list(config.depths)}")
    limit = position_limit(model)
    lengths = sorted(set(int(n) for n in config.lengths))
    usable = [n for n in lengths if limit is None or n + config.max_new_tokens <= limit]
    skipped = [n for n in lengths if n not in usable]
    if not usable:
        raise ValueError(f"every length in {lengths} exceeds the model's position limit "
                         f"max_position_embeddings={limit} (minus {config.max_new_tokens} new tokens)")
    model.eval()
    haystack = Haystack(tokenizer, documents, max(usable))
    rng = np.random.default_rng(config.seed)
    stop = [t for t in (getattr(tokenizer, "eos_token_id", None),) if t is not None]
    started = time.perf_counter()
    grid, rows = [], []
    for length in usable:
        cells = []
        for depth in config.depths:
            hits = 0
            for trial in range(config.trials):
                key = random_key(rng, config.key_digits)
                ids, where = build_prompt(tokenizer, haystack, length, depth, key)
                new = greedy_complete(model, ids, config.max_new_tokens, config.prefill_chunk, stop)
                completion = tokenizer.decode(new, skip_special_tokens=True)
                row = NIAHRow(length, float(depth), trial, key, where, completion, exact_match(completion, key))
                hits += row.correct
                rows.append(row)
                if progress is not None:
                    progress(row)
            cells.append(hits / config.trials)
        grid.append(cells)
    return NIAHResult(usable, [float(d) for d in config.depths], grid, skipped, rows,
                      round(time.perf_counter() - started, 2))


def plot_heatmap(result: dict, path: str | Path, title: str = "") -> None:
    """Depth (rows) x context length (columns), colour = exact-match accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array(result["accuracy"], dtype=float).T
    fig, ax = plt.subplots(figsize=(1.1 * len(result["lengths"]) + 2.5, 0.38 * len(result["depths"]) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(result["lengths"])), [f"{n // 1024}K" if n % 1024 == 0 else str(n)
                                                  for n in result["lengths"]])
    ax.set_yticks(range(len(result["depths"])), [f"{round(100 * d)}%" for d in result["depths"]])
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}".rstrip("0").rstrip(".") if value not in (0.0, 1.0) else f"{value:.0f}",
                ha="center", va="center", fontsize=7)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title or f"needle in a haystack: mean exact match {result['mean_accuracy']:.2f}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class NIAHJob:
    """`slimkv eval niah MODEL`: the grid of `run_niah` on a saved model, written as niah.json + niah.png."""

    # a Hugging Face model folder (slimkv, RecurFormer or any causal LM) or a `slimkv train` run directory
    model: str = setting(positional=True)
    # the filler text: a corpus split (heldout, train) of `slimkv fetch corpus`, or a UTF-8 text file (documents
    # separated by two blank lines)
    haystack: str = "heldout"
    # prompt lengths in tokens; those beyond the model's max_position_embeddings are skipped
    lengths: tuple[int, ...] = ranged(DEFAULT_LENGTHS, ge=1)
    # needle depths in percent of the haystack
    depths: tuple[float, ...] = ranged(tuple(100 * d for d in DEFAULT_DEPTHS), ge=0, le=100)
    # prompts (different pass keys) per cell
    trials: int = ranged(1, ge=1)
    max_new_tokens: int = ranged(8, ge=1)
    # prefill the prompt in pieces of N tokens, carrying the cache (0 = one forward)
    prefill_chunk: int = ranged(0, ge=0)
    # seed of the pass keys
    seed: int = 0
    # corpus data directory ("" = $SLIMKV_DATA or ./data)
    data_dir: str = ""
    # where to run: auto, cpu, cuda, cuda:N or mps
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    # niah.json and niah.png go here
    out: str = setting("runs/niah", metavar="DIR")


def run_niah_job(job: NIAHJob, on_row: Callable[[NIAHRow], None] | None = None,
                 loaded: tuple | None = None) -> tuple[dict, NIAHResult]:
    """Load the model (or take `loaded` = (model, tokenizer) of job.model), run the grid on the haystack, write
    <out>/niah.json and niah.png -> (report, result)."""
    from ..device import resolve_device
    from ..io import write_json
    from ..machine import machine_header
    from .loading import load_model_and_tokenizer
    from .texts import load_documents

    model, tokenizer = loaded or load_model_and_tokenizer(job.model)
    if tokenizer is None:
        raise ValueError(f"{job.model!r} has no tokenizer (tokenizer.json); save one beside the model")
    device = resolve_device(job.device)
    model = model.to(device, dtype=getattr(torch, job.dtype))
    documents, what = load_documents(job.haystack, job.data_dir or None, option="--haystack")
    config = NIAHConfig(lengths=job.lengths, depths=tuple(d / 100 for d in job.depths), trials=job.trials,
                        max_new_tokens=job.max_new_tokens, prefill_chunk=job.prefill_chunk, seed=job.seed)
    result = run_niah(model, tokenizer, documents, config, progress=on_row)
    report = {"header": machine_header(device), "model": str(job.model), "haystack": what,
              "config": asdict(job), **result.as_dict()}
    out = Path(job.out)
    write_json(out / "niah.json", report, indent=1)
    plot_heatmap(report, out / "niah.png", title=f"{Path(job.model).name}: needle in a haystack ({what}), "
                                                 f"mean exact match {result.mean_accuracy:.2f}")
    return report, result
