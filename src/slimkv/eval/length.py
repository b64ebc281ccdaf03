"""Length extrapolation: held-out loss against token position, far past the length a model was trained at.

    curve = loss_by_position(model, ids, length=4096, chunk=256)    # e.g. 16x a 256-token training length
    slimkv eval length runs/len/rodimus runs/len/llama --length 4096 --trained-length 256 --out runs/length

The held-out tokens are cut into sequences of `length` tokens; every token's next-token loss is recorded by its
position in its sequence and averaged per position bin. A model with a cache (Rodimus, Rodimus+, Mamba2, GLA,
RecurFormer) walks each sequence in chunks of `chunk` tokens with its cache carried, so no single forward is longer
than it was trained on and the curve shows what the carried state is worth at each distance; any other causal LM
(HF Llama) sees the whole sequence in one forward (RoPE positions past its training length included). A state that
degrades past the training length shows as a curve that turns up there.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ranged, setting
from ..models.compat import output_cache, with_cache


@dataclass
class LengthCurve:
    length: int
    chunk: int
    bin_size: int
    sequences: int
    # mean next-token loss (nats) of the tokens at positions [i * bin_size, (i + 1) * bin_size)
    loss: list[float]
    trained_length: int | None = None

    def positions(self) -> list[int]:
        """The first position of every bin."""
        return [i * self.bin_size for i in range(len(self.loss))]

    def as_dict(self) -> dict:
        return {**asdict(self), "positions": self.positions()}


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


@torch.no_grad()
def token_losses(model, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Next-token losses [B, T - 1] of ids [B, T]; a model with `allocate_cache` goes chunk by chunk."""
    model.eval()
    B, T = ids.shape
    if not hasattr(model, "allocate_cache"):
        logits = _upcast(model(ids, use_cache=False).logits)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(B, -1)
    cache = model.allocate_cache(B)
    losses, last = [], None
    for start in range(0, T, chunk):
        part = ids[:, start:start + chunk]
        out = model(part, use_cache=True, **with_cache(cache))
        logits = _upcast(out.logits)
        if last is not None:  # the first token of this chunk, predicted from the end of the previous one
            losses.append(F.cross_entropy(last, part[:, 0], reduction="none")[:, None])
        if part.shape[1] > 1:
            losses.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), part[:, 1:].flatten(),
                                          reduction="none").view(B, -1))
        last = logits[:, -1]
        cache = output_cache(out) or cache
    return torch.cat(losses, dim=1)


def loss_by_position(model, ids: torch.Tensor, length: int, chunk: int = 256, bin_size: int = 128,
                     max_sequences: int = 16, batch: int = 4, trained_length: int | None = None) -> LengthCurve:
    """Mean loss per position bin over up to `max_sequences` sequences of `length` tokens cut from ids [N]."""
    if length < 2 or chunk < 1 or bin_size < 1:
        raise ValueError(f"length must be >= 2 and chunk, bin_size >= 1; got {length}, {chunk}, {bin_size}")
    count = min(max_sequences, len(ids) // length)
    if count < 1:
        raise ValueError(f"the text has {len(ids)} tokens: fewer than one sequence of {length}")
    device = next(model.parameters()).device
    sequences = ids[: count * length].view(count, length)
    total = torch.zeros(length - 1, dtype=torch.float64)
    for start in range(0, count, batch):
        total += token_losses(model, sequences[start:start + batch].to(device), chunk).double().sum(0).cpu()
    mean = total / count
    bins = [float(mean[i:i + bin_size].mean()) for i in range(0, length - 1, bin_size)]
    return LengthCurve(length=length, chunk=chunk, bin_size=bin_size, sequences=count, loss=bins,
                       trained_length=trained_length)


def write_curves(curves: dict[str, LengthCurve], out: str | Path, header: dict | None = None) -> tuple[Path, Path]:
    """length.json and length.png (loss against position, one line per model, the training length marked)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"header": header or {}, "curves": {name: c.as_dict() for name, c in curves.items()}}
    atomic_write_text(out / "length.json", json.dumps(payload, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    trained = set()
    for name, curve in curves.items():
        ax.plot(curve.positions(), [math.exp(v) for v in curve.loss], label=name)
        if curve.trained_length:
            trained.add(curve.trained_length)
    for t in trained:
        ax.axvline(t, color="gray", ls=":", lw=1)
        ax.text(t, ax.get_ylim()[1], " trained length", va="top", fontsize=8, color="gray")
    # a linear axis: the training length sits near the left and everything after it is extrapolation
    ax.set_xlim(0, max(curve.length for curve in curves.values()))
    ax.set_xlabel("position in the sequence (tokens; each point averages a bin starting there)")
    ax.set_ylabel("held-out perplexity at that position")
    ax.set_title("length extrapolation: loss vs position", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out / "length.png", buf.getvalue())
    return out / "length.json", out / "length.png"


@dataclass
class LengthJob:
    """`slimkv eval length MODEL...`: one loss-by-position curve per model on the same text (`run_length_job`)."""

    # model folders or `slimkv train` run directories; each curve is named after its folder
    models: tuple[str, ...] = setting(positional=True)
    # the text: a UTF-8 file, or a corpus split of `slimkv fetch corpus` (heldout, train)
    text: str = setting("heldout", metavar="FILE_OR_SPLIT")
    # tokens per sequence (e.g. 16x the training length)
    length: int = ranged(4096, ge=2)
    # tokens per forward for models with a cache (the state is carried between chunks)
    chunk: int = ranged(256, ge=1)
    # positions averaged per point of the curve
    bin_size: int = ranged(128, ge=1)
    # sequences of `length` tokens scored per model (fewer when the text is shorter)
    max_sequences: int = ranged(16, ge=1)
    # sequences per forward
    batch: int = ranged(4, ge=1)
    # the models' training sequence length, marked on the plot (0 = not marked)
    trained_length: int = ranged(0, ge=0)
    # corpus data directory ("" = $SLIMKV_DATA or ./data)
    data_dir: str = ""
    # where to run: auto, cpu, cuda, cuda:N or mps
    device: str = "cpu"
    # output folder for length.json and length.png
    out: str = setting("runs/length", metavar="DIR")


def run_length_job(job: LengthJob, progress: bool = False) -> dict[str, LengthCurve]:
    """Load each model with its tokenizer, score `job.text`, write <out>/length.json and length.png -> curves."""
    from ..device import resolve_device
    from ..machine import machine_header
    from .loading import load_model_and_tokenizer
    from .texts import text_ids_and_bytes

    if not job.models:
        raise ValueError("give at least one model folder or run directory")
    device = resolve_device(job.device)
    curves: dict[str, LengthCurve] = {}
    for path in job.models:
        model, tokenizer = load_model_and_tokenizer(path)
        if tokenizer is None:
            raise ValueError(f"{path!r} has no tokenizer (tokenizer.json); save one beside the model")
        ids, _, _ = text_ids_and_bytes(job.text, tokenizer, job.data_dir or None, progress=progress,
                                       option="--text")
        name = Path(path).name if Path(path).name != "model" else Path(path).parent.name
        curves[name] = loss_by_position(model.to(device), ids, job.length, job.chunk, job.bin_size,
                                        job.max_sequences, job.batch, job.trained_length or None)
    write_curves(curves, job.out, header={**machine_header(device), "job": asdict(job)})
    return curves
