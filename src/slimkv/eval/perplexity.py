"""Token- and byte-level perplexity of a causal LM on a long text, in bounded memory.

Two ways to walk a text of N tokens (memory never depends on N):
- "recurrent" (Rodimus / Rodimus+): consecutive windows of seq_len tokens, the model's cache carried from one window
  to the next. The text is cut into (up to) 16 long pieces walked side by side as one batch; within a piece every
  token is scored with the whole piece before it as context.
- "sliding" (attention models): input windows of seq_len tokens starting every `stride` tokens; each window scores
  only the next tokens the previous windows did not, so each token is predicted from between seq_len - stride + 1
  and seq_len tokens of context (the usual Hugging Face recipe). stride = seq_len gives disjoint windows.

The text is preceded by the document separator (`<|endoftext|>`), as documents are in training data, so every token
of the text is scored. Bits per byte = total NLL / (ln 2 * UTF-8 bytes of the text); per-byte perplexity =
exp(total NLL / bytes). Both compare models with different tokenizers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ranged, setting

Mode = Literal["recurrent", "sliding"]


@dataclass
class PerplexityResult:
    tokens: int
    bytes: int
    nll_nats: float
    token_ppl: float
    bits_per_byte: float
    byte_ppl: float
    mode: str
    seq_len: int
    stride: int

    def as_dict(self) -> dict:
        return asdict(self)


def default_mode(model) -> Mode:
    """Recurrent models carry their state across windows; everything else uses a sliding window."""
    return "recurrent" if getattr(model.config, "model_type", "") == "slimkv_rodimus" else "sliding"


def position_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _check_lengths(model, seq_len: int, stride: int) -> None:
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise ValueError(f"--stride must lie in [1, seq_len={seq_len}], got {stride}")
    limit = position_limit(model)
    if limit is not None and seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's position limit max_position_embeddings={limit}")


@torch.no_grad()
def _recurrent_nll(model, ids: torch.Tensor, seq_len: int, progress: bool, segments: int = 16) -> tuple[float, int]:
    """The text is cut into `segments` contiguous pieces walked side by side as one batch (a CPU runs 16 rows
    nearly as fast as one); within a piece every token sees all of the piece before it, and the first token of a
    piece is scored from the end of the previous piece."""
    device = next(model.parameters()).device
    n = len(ids)
    rows = max(1, min(segments, n // (4 * seq_len)))
    width = -(-n // rows)
    padded = torch.zeros(rows * width, dtype=torch.long)
    padded[:n] = ids
    valid = torch.zeros(rows * width, dtype=torch.bool)
    valid[:n] = True
    # right padding only ever follows the real tokens of the last row, so it never changes their logits
    padded, valid = padded.view(rows, width).to(device), valid.view(rows, width).to(device)
    nll, count = 0.0, 0
    cache, last_logits = None, None
    for start in tqdm(range(0, width, seq_len), desc="ppl (recurrent)", unit="window", disable=not progress):
        chunk, mask = padded[:, start:start + seq_len], valid[:, start:start + seq_len]
        out = model(input_ids=chunk, past_key_values=cache, use_cache=True)
        logits = out.logits.float()
        targets = chunk[:, 1:].masked_fill(~mask[:, 1:], -100)
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum",
                               ignore_index=-100).item()
        count += int(mask[:, 1:].sum())
        if last_logits is not None:
            first = chunk[:, 0].masked_fill(~mask[:, 0], -100)
            nll += F.cross_entropy(last_logits, first, reduction="sum", ignore_index=-100).item()
            count += int(mask[:, 0].sum())
        last_logits, cache = logits[:, -1], out.past_key_values
    # the first token of row r + 1 follows the last token of row r
    if rows > 1:
        tail = padded[1:, 0]
        nll += F.cross_entropy(last_logits[:-1], tail, reduction="sum").item()
        count += rows - 1
    return nll, count


@torch.no_grad()
def _sliding_nll(model, ids: torch.Tensor, seq_len: int, stride: int, progress: bool) -> tuple[float, int]:
    device = next(model.parameters()).device
    # inputs ids[begin:end] predict targets ids[begin + 1:end + 1]; next_target is the first target not yet scored
    nll, count, next_target = 0.0, 0, 1
    for begin in tqdm(range(0, len(ids) - 1, stride), desc="ppl (sliding)", unit="window", disable=not progress):
        end = min(begin + seq_len, len(ids) - 1)
        if end + 1 <= next_target:
            continue
        window = ids[begin:end + 1].to(device)
        logits = model(input_ids=window[None, :-1], use_cache=False).logits[0].float()
        first = next_target - (begin + 1)
        nll += F.cross_entropy(logits[first:], window[first + 1:], reduction="sum").item()
        count += end + 1 - next_target
        next_target = end + 1
        if end == len(ids) - 1:
            break
    return nll, count


def token_nll(model, ids: torch.Tensor, *, seq_len: int, stride: int | None = None, mode: Mode | None = None,
              progress: bool = False) -> tuple[float, int]:
    """Summed NLL (nats) of ids[1:] given what precedes each, and the number of scored tokens."""
    stride = stride or seq_len
    _check_lengths(model, seq_len, stride)
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if len(ids) < 2:
        raise ValueError("the text is too short to score: it needs at least one token")
    model.eval()
    mode = mode or default_mode(model)
    if mode == "recurrent":
        return _recurrent_nll(model, ids, seq_len, progress)
    return _sliding_nll(model, ids, seq_len, stride, progress)


def perplexity(model, ids: torch.Tensor, num_bytes: int, *, seq_len: int, stride: int | None = None,
               mode: Mode | None = None, progress: bool = False) -> PerplexityResult:
    """Perplexity of `ids` (the separator first, then the text's tokens) whose text is `num_bytes` UTF-8 bytes."""
    if num_bytes <= 0:
        raise ValueError("the text is empty")
    mode = mode or default_mode(model)
    stride = stride or seq_len
    nll, count = token_nll(model, ids, seq_len=seq_len, stride=stride, mode=mode, progress=progress)
    return PerplexityResult(
        tokens=count, bytes=num_bytes, nll_nats=nll, token_ppl=math.exp(min(nll / count, 700.0)),
        bits_per_byte=nll / (math.log(2) * num_bytes), byte_ppl=math.exp(min(nll / num_bytes, 700.0)),
        mode=mode, seq_len=seq_len, stride=stride if mode == "sliding" else seq_len,
    )


def encode_text(tokenizer, text: str, separator_id: int | None) -> torch.Tensor:
    """[separator] + tokens of `text` (no other special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    ids = backend.encode(text, add_special_tokens=False).ids
    prefix = [separator_id] if separator_id is not None else []
    return torch.tensor(prefix + list(ids), dtype=torch.long)


@dataclass
class PerplexityJob:
    """`slimkv eval MODEL --ppl FILE_OR_SPLIT`: perplexity of a saved model on a text (`evaluate_perplexity`)."""

    # a Hugging Face model folder (slimkv Rodimus/Rodimus+, RecurFormer or any causal LM) or a `slimkv train` run
    # directory
    model: str = setting(positional=True)
    # the text: a UTF-8 file, or a corpus split of `slimkv fetch corpus` (heldout, train)
    ppl: str = setting(metavar="FILE_OR_SPLIT")
    # tokens per forward window
    seq_len: int = ranged(512, ge=2)
    # sliding-window step for attention models (none = seq_len / 2)
    stride: Optional[int] = ranged(None, ge=1)
    # carry the cache across windows, or slide a window (none = by model type: recurrent for slimkv models)
    mode: Optional[Mode] = None
    # score only the first N tokens (0 = all; the byte count is scaled in proportion)
    max_tokens: int = ranged(0, ge=0)
    # corpus data directory ("" = $SLIMKV_DATA or ./data)
    data_dir: str = ""
    # where to run: auto, cpu, cuda, cuda:N or mps
    device: str = "cpu"


def evaluate_perplexity(job: PerplexityJob, progress: bool = False, loaded: tuple | None = None) -> dict:
    """Load `job.model` (or take `loaded` = (model, tokenizer) of it), tokenise `job.ppl` with its tokenizer and score
    it -> {"model", "text", PerplexityResult}."""
    from ..device import resolve_device
    from .loading import load_model_and_tokenizer
    from .texts import text_ids_and_bytes

    model, tokenizer = loaded or load_model_and_tokenizer(job.model)
    if tokenizer is None:
        raise ValueError(f"{job.model!r} has no tokenizer (tokenizer.json); save one beside the model")
    mode = job.mode or default_mode(model)
    stride = job.stride or (max(1, job.seq_len // 2) if mode == "sliding" else job.seq_len)
    # fail on bad lengths before tokenising a whole corpus
    _check_lengths(model, job.seq_len, stride)
    model = model.to(resolve_device(job.device))
    ids, num_bytes, what = text_ids_and_bytes(job.ppl, tokenizer, job.data_dir or None, progress=progress)
    if job.max_tokens and len(ids) > job.max_tokens:
        # keep the byte count consistent: scale it by the share of tokens kept
        num_bytes = max(1, round(num_bytes * job.max_tokens / len(ids)))
        ids = ids[:job.max_tokens]
    result = perplexity(model, ids, num_bytes, seq_len=job.seq_len, stride=stride, mode=mode, progress=progress)
    return {"model": str(job.model), "text": what, **result.as_dict()}
