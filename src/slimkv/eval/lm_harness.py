"""lm-evaluation-harness: local tasks built from the project's corpus (the model class is in eval/lm_model.py).

Tasks (`write_tasks(out_dir, ...)` writes YAML + JSONL; run with `--include_path out_dir`):
- `slimkv_heldout_ppl`: loglikelihood_rolling over the held-out split (whole texts never trained on), cut into
  pieces of at most `max_chars` characters at paragraph ends; word / byte perplexity and bits per byte.
- `slimkv_continuation`: 4-way multiple choice: a held-out passage of 2-4 sentences, and which sentence truly came
  next; the three distractors are sentences of similar length from OTHER held-out documents. acc and acc_norm.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import ranged, setting
from ..io import atomic_write_text

PPL_TASK = "slimkv_heldout_ppl"
MC_TASK = "slimkv_continuation"

_PPL_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
  source: {source}
"""

_MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  source: {source}
"""

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Sentences of prose, cut after . ! ? (and closing quotes) before a capital letter; whitespace collapsed."""
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]


def perplexity_pieces(documents: Sequence[str], max_chars: int = 4000, max_pieces: int = 0) -> list[str]:
    """Documents cut at paragraph ends into pieces of at most max_chars (a longer paragraph is its own piece)."""
    pieces: list[str] = []
    for doc in documents:
        current = ""
        for paragraph in doc.split("\n\n"):
            if current and len(current) + 2 + len(paragraph) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current.strip():
            pieces.append(current)
        if max_pieces and len(pieces) >= max_pieces:
            return pieces[:max_pieces]
    return pieces


def continuation_items(documents: Sequence[str], num_items: int = 500, seed: int = 0, num_choices: int = 4,
                       min_words: int = 6, max_words: int = 40) -> list[dict]:
    """Multiple-choice items {"context", "choices", "label", "doc"}: which sentence followed the passage."""
    rng = np.random.default_rng(seed)
    per_doc = [[s for s in split_sentences(doc)] for doc in documents]
    pool = [(d, s) for d, sentences in enumerate(per_doc) for s in sentences
            if min_words <= len(s.split()) <= max_words]
    if len({d for d, _ in pool}) < 2:
        raise ValueError("the continuation task needs at least two held-out documents with whole sentences")
    lengths = np.array([len(s.split()) for _, s in pool])
    candidates = [(d, i) for d, sentences in enumerate(per_doc) for i in range(2, len(sentences))
                  if min_words <= len(sentences[i].split()) <= max_words]
    if not candidates:
        raise ValueError("the held-out text has no passage followed by a sentence of "
                         f"{min_words}-{max_words} words")
    order = rng.permutation(len(candidates))[:num_items]
    items = []
    for index in order:
        d, i = candidates[int(index)]
        sentences = per_doc[d]
        context = " ".join(sentences[max(0, i - int(rng.integers(2, 5))):i])
        answer = sentences[i]
        words = len(answer.split())
        # distractors: similar length (within 30%), other documents, all different
        close = np.flatnonzero((np.abs(lengths - words) <= max(2, 0.3 * words)))
        choices, seen = [], {answer}
        for j in rng.permutation(close):
            other_doc, sentence = pool[int(j)]
            if other_doc != d and sentence not in seen:
                choices.append(sentence)
                seen.add(sentence)
            if len(choices) == num_choices - 1:
                break
        if len(choices) < num_choices - 1:
            continue
        label = int(rng.integers(0, num_choices))
        choices.insert(label, answer)
        items.append({"context": context, "choices": choices, "label": label, "doc": d})
    return items


def write_tasks(out_dir: str | Path, heldout_documents: Sequence[str], *, source: str = "held-out split",
                max_chars: int = 4000, max_pieces: int = 0, mc_items: int = 500, seed: int = 0) -> dict[str, Path]:
    """Write both tasks (YAML + JSONL, absolute data paths) into out_dir -> {task name: yaml path}."""
    out = Path(out_dir).resolve()
    pieces = perplexity_pieces(heldout_documents, max_chars, max_pieces)
    if not pieces:
        raise ValueError("the held-out split is empty")
    items = continuation_items(heldout_documents, mc_items, seed)
    ppl_data, mc_data = out / f"{PPL_TASK}.jsonl", out / f"{MC_TASK}.jsonl"
    atomic_write_text(ppl_data, "".join(json.dumps({"text": p}, ensure_ascii=False) + "\n" for p in pieces))
    atomic_write_text(mc_data, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    paths = {PPL_TASK: out / f"{PPL_TASK}.yaml", MC_TASK: out / f"{MC_TASK}.yaml"}
    atomic_write_text(paths[PPL_TASK], _PPL_YAML.format(task=PPL_TASK, data=json.dumps(str(ppl_data)),
                                                        source=json.dumps(source)))
    atomic_write_text(paths[MC_TASK], _MC_YAML.format(task=MC_TASK, data=json.dumps(str(mc_data)),
                                                      source=json.dumps(source)))
    return paths


def resolve_model_folder(pretrained: str | Path) -> Path:
    """A Hugging Face folder, or a `slimkv train` run directory's exported model/ folder."""
    path = Path(pretrained)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise FileNotFoundError(f"{str(path)!r} is neither a model folder (config.json) nor a run directory with an "
                            "exported model/ folder")


@dataclass
class LmTasksJob:
    """`slimkv eval lm-tasks`: the two lm-evaluation-harness tasks written from a held-out text."""

    # source text: a corpus split (heldout, train) of `slimkv fetch corpus`, or a UTF-8 file (documents separated
    # by two blank lines)
    text: str = "heldout"
    # task folder ("" = <data dir>/lm_tasks)
    out: str = setting("", metavar="DIR")
    # characters per perplexity piece
    max_chars: int = ranged(4000, ge=1)
    # perplexity pieces kept (0 = all)
    max_pieces: int = ranged(0, ge=0)
    # multiple-choice items
    mc_items: int = ranged(500, ge=1)
    seed: int = 0
    # corpus data directory ("" = $SLIMKV_DATA or ./data)
    data_dir: str = ""


def write_text_tasks(job: LmTasksJob) -> tuple[dict[str, Path], str, Path]:
    """Write both tasks from `job.text` -> ({task name: yaml path}, what the text was, the task folder)."""
    from ..data.files import data_root
    from .texts import load_documents

    documents, what = load_documents(job.text, job.data_dir or None, option="--text")
    out = Path(job.out) if job.out else data_root(job.data_dir or None) / "lm_tasks"
    paths = write_tasks(out, documents, source=what, max_chars=job.max_chars, max_pieces=job.max_pieces,
                        mc_items=job.mc_items, seed=job.seed)
    return paths, what, out
