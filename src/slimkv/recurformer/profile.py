"""Recency ratio of every attention head and KV unit of a pretrained decoder, on calibration text.

    result = profile(ProfileConfig(model="data/models/smollm2-135m-instruct", json="profile.json"))

legend: B batch, T time, H query heads, Hk KV heads (units), D head dim, W number of windows

    RR_h(k) = mean over queries i >= k of  sum_{i-k <= j <= i} softmax_j(q_i . k_j * scale)

(the attention mass on the last k + 1 keys; queries i < k are skipped because there RR = 1 trivially).
Nothing of size T x T is built: the band scores q_i . k_{i-d} for d = 0..k_max come from shifted dot products, their
running log-sum-exp gives the band mass for every k <= k_max at once, and the full row log-sum-exp is computed over
query chunks. `recency_ratio_reference` is the dense spec the tests compare against.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

from ..config import check_ranges, ranged, setting
from ..device import resolve_device
from ..io import atomic_write, atomic_write_text
from ..models.recurformer import attention_geometry, check_family
from ..ops.rope import apply_rope

DEFAULT_WINDOWS = (8, 16, 32, 64, 128)


def _window_keep(i: torch.Tensor, j: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    keep = j <= i
    if sliding_window is not None:
        # HF's sliding window: key j is visible to query i when i - j < sliding_window
        keep = keep & (i - j < sliding_window)
    return keep


def recency_ratio_reference(q, k, windows, scale, sliding_window=None):
    """Dense spec: softmax over the full [T, T] causal matrix. q [B,T,H,D], k [B,T,Hk,D] -> (sums [W, H], counts [W])."""
    B, T, H, _ = q.shape
    k = k.repeat_interleave(H // k.shape[2], dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
    idx = torch.arange(T)
    keep = _window_keep(idx[:, None], idx[None, :], sliding_window)
    probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    sums, counts = [], []
    for w in windows:
        band = keep & (idx[:, None] - idx[None, :] <= w)
        per_query = (probs * band).sum(-1)  # [B, H, T]
        sums.append(per_query[:, :, w:].sum(dim=(0, 2)))
        counts.append(B * max(T - w, 0))
    return torch.stack(sums).float(), torch.tensor(counts, dtype=torch.float64)


def recency_ratio_sums(q, k, windows, scale, sliding_window=None, query_chunk=256):
    """Band + row log-sum-exp form of `recency_ratio_reference`; memory O(B * H * query_chunk * T) per step.

    Args:
        q: [B, T, H, D] post-RoPE queries.  k: [B, T, Hk, D] post-RoPE keys (H a multiple of Hk).
        windows: window sizes k (each counts the keys i-k..i).  scale: softmax scale.
        sliding_window: the model's own attention window (Mistral), or None for full causal attention.
    Returns:
        sums [W, H] (sum of RR over queries i >= k and the batch) and counts [W] (number of such queries).
    """
    B, T, H, D = q.shape
    q = q.float()
    k = k.float().repeat_interleave(H // k.shape[2], dim=2)
    k_max = min(max(windows), T - 1)
    # band_lse[b, i, h, d] = log-sum-exp of the scores of query i on keys i-d..i; full_lse on all visible keys.
    # Both come from one [chunk, keys] score block per query chunk: the band is gathered from its diagonals.
    band_lse = torch.empty(B, T, H, k_max + 1, device=q.device)
    full_lse = torch.empty(B, T, H, device=q.device)
    idx = torch.arange(T, device=q.device)
    offsets = torch.arange(k_max + 1, device=q.device)
    for start in range(0, T, query_chunk):
        stop = min(start + query_chunk, T)
        scores = torch.einsum("bihd,bjhd->bihj", q[:, start:stop], k[:, :stop]) * scale
        keep = _window_keep(idx[start:stop, None], idx[None, :stop], sliding_window)
        scores = scores.masked_fill(~keep[None, :, None, :], float("-inf"))
        full_lse[:, start:stop] = scores.logsumexp(-1)
        key_of = idx[start:stop, None] - offsets[None, :]  # [chunk, k_max + 1]: key i - d
        band = scores.gather(-1, key_of.clamp(min=0)[None, :, None, :].expand(B, -1, H, -1))
        band = band.masked_fill((key_of < 0)[None, :, None, :], float("-inf"))
        band_lse[:, start:stop] = torch.logcumsumexp(band, dim=-1)
    sums, counts = [], []
    for w in windows:
        rr = (band_lse[..., min(w, k_max)] - full_lse).exp()  # [B, T, H]
        sums.append(rr[:, w:].sum(dim=(0, 1)))
        counts.append(B * max(T - w, 0))
    return torch.stack(sums), torch.tensor(counts, dtype=torch.float64)


@dataclass
class RecencyProfile:
    """RR per layer and query head / KV unit, for several windows. `head_rr[w][layer][head]`."""

    model: str
    family: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    windows: list[int]
    window: int
    num_sequences: int
    seq_len: int
    calibration_text: str = ""
    head_rr: dict[int, list[list[float]]] = field(default_factory=dict)
    unit_rr: dict[int, list[list[float]]] = field(default_factory=dict)

    def units(self, window: int | None = None) -> list[list[float]]:
        return self.unit_rr[window or self.window]

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["head_rr"] = {str(w): v for w, v in self.head_rr.items()}
        out["unit_rr"] = {str(w): v for w, v in self.unit_rr.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "RecencyProfile":
        known = set(cls.__dataclass_fields__)
        data = {key: value for key, value in data.items() if key in known}
        data["head_rr"] = {int(w): v for w, v in data["head_rr"].items()}
        data["unit_rr"] = {int(w): v for w, v in data["unit_rr"].items()}
        return cls(**data)


def calibration_batches(tokenizer, text: str, num_sequences: int, seq_len: int, window: int) -> torch.Tensor:
    """Cut tokenized text into `num_sequences` non-overlapping rows of `seq_len` tokens, evenly spread over it."""
    if seq_len <= window:
        raise ValueError(f"calibration sequences of {seq_len} tokens are not longer than the window {window}")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() <= window:
        raise ValueError(
            f"calibration text has {ids.numel()} tokens, not more than the window k = {window}: "
            "RR is only defined for queries i >= k; give a longer text or a smaller --window"
        )
    if ids.numel() < seq_len:
        seq_len = ids.numel()
    available = ids.numel() // seq_len
    num_sequences = max(1, min(num_sequences, available))
    stride = available // num_sequences
    rows = [ids[i * stride * seq_len:(i * stride + 1) * seq_len] for i in range(num_sequences)]
    return torch.stack(rows)


@torch.no_grad()
def profile_model(model, input_ids: torch.Tensor, windows=DEFAULT_WINDOWS, window: int = 32,
                  batch_size: int = 4, progress: bool = True, name: str = "") -> RecencyProfile:
    """Run `model` (HF Llama/Qwen2/Mistral) over `input_ids` [N, T] and score every head by RR for each window."""
    from tqdm import tqdm

    config = model.config
    family = check_family(config)
    geo = attention_geometry(config)
    windows = sorted(set(int(w) for w in windows) | {int(window)})
    if min(windows) < 1:
        raise ValueError(f"windows must be positive; got {windows}")
    N, T = input_ids.shape
    if T <= window:
        raise ValueError(f"calibration sequences of {T} tokens are not longer than the window k = {window}")
    sliding = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    scale = getattr(config, "query_pre_attn_scalar", None) or geo.head_dim
    scale = scale ** -0.5
    layers = model.model.layers
    device = next(model.parameters()).device
    sums = torch.zeros(len(layers), len(windows), geo.num_heads, dtype=torch.float64)
    counts = torch.zeros(len(windows), dtype=torch.float64)

    def make_hook(layer_idx):
        def hook(module, args, kwargs):
            h = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            B, L, _ = h.shape
            q = apply_rope(module.q_proj(h).view(B, L, -1, geo.head_dim), cos, sin)
            k = apply_rope(module.k_proj(h).view(B, L, -1, geo.head_dim), cos, sin)
            s, c = recency_ratio_sums(q, k, windows, scale, sliding)
            sums[layer_idx] += s.double().cpu()
            if layer_idx == 0:
                counts.add_(c)
        return hook

    handles = [layer.self_attn.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.eval()
        for start in tqdm(range(0, N, batch_size), desc="profile", unit="batch", disable=not progress):
            model(input_ids=input_ids[start:start + batch_size].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    head = (sums / counts[None, :, None]).float()  # [L, W, H]
    unit = head.view(len(layers), len(windows), geo.num_kv_heads, geo.heads_per_unit).mean(-1)
    return RecencyProfile(
        model=name, family=family, num_layers=geo.num_layers, num_heads=geo.num_heads,
        num_kv_heads=geo.num_kv_heads, head_dim=geo.head_dim, windows=windows, window=int(window),
        num_sequences=N, seq_len=T,
        head_rr={w: head[:, i].tolist() for i, w in enumerate(windows)},
        unit_rr={w: unit[:, i].tolist() for i, w in enumerate(windows)},
    )


@dataclass
class ProfileConfig:
    """`slimkv recurformer profile`: score every query head and KV unit of a pretrained model (`profile`)."""

    # HF model folder of the Llama, Qwen2 or Mistral family (e.g. data/models/smollm2-135m-instruct)
    model: str = setting(metavar="DIR")
    # calibration text file (none: the corpus train split, fetched if missing)
    data: Optional[str] = setting(None, metavar="FILE")
    # k: RR counts the attention mass on the last k + 1 keys (the table, the heatmap and convert's ranking use it)
    window: int = ranged(32, ge=1)
    # further k values scored in the same pass and stored in the JSON
    windows: list[int] = setting(default_factory=lambda: list(DEFAULT_WINDOWS), ge=1)
    # calibration sequences, spread evenly over the text
    num_sequences: int = ranged(32, ge=1)
    # tokens per calibration sequence
    seq_len: int = ranged(512, ge=2)
    # sequences per forward pass
    batch_size: int = ranged(4, ge=1)
    # where the model runs (float32): auto = cuda when present (on a CPU the profile of 16 x 512 tokens took
    # minutes beside other jobs on the H200 machine, docs/recurformer.md)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # write the profile as JSON here (what `recurformer convert --profile` reads)
    json: Optional[str] = setting(None, metavar="FILE")
    # write a heatmap (layers x KV units, layers x query heads) here
    png: Optional[str] = setting(None, metavar="FILE")


def profile(config: ProfileConfig, progress: bool = True) -> RecencyProfile:
    """Load `config.model`, score it on the calibration text, write the JSON / PNG asked for; returns the profile."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .data import calibration_text

    check_ranges(config)
    device = resolve_device(config.device)  # a device that is not here fails before any fetch or load
    if not Path(config.model, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {config.model} (config.json missing); try "
                                "`slimkv fetch smollm2`")
    check_family(AutoConfig.from_pretrained(config.model))
    text, source = calibration_text(config.data)
    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    ids = calibration_batches(tokenizer, text, config.num_sequences, config.seq_len, config.window)
    result = profile_model(model, ids, config.windows, config.window, config.batch_size, progress=progress,
                           name=Path(config.model).name)
    result.calibration_text = source
    if config.json:
        write_json(result.to_json(), config.json)
    if config.png:
        plot_heatmap(result, config.png)
    return result


def format_table(profile: RecencyProfile) -> str:
    """One row per layer: RR of each unit at the profile's window, then its query heads in brackets."""
    w = profile.window
    lines = [f"recency ratio RR(k={w}) per KV unit [query heads]; {profile.num_sequences} x {profile.seq_len} tokens"]
    per_unit = profile.num_heads // profile.num_kv_heads
    for layer, units in enumerate(profile.unit_rr[w]):
        cells = []
        for u, rr in enumerate(units):
            heads = profile.head_rr[w][layer][u * per_unit:(u + 1) * per_unit]
            cells.append(f"{rr:.3f} [" + " ".join(f"{x:.2f}" for x in heads) + "]")
        lines.append(f"layer {layer:3d}  " + "  ".join(cells))
    flat = sorted((rr, l, u) for l, units in enumerate(profile.unit_rr[w]) for u, rr in enumerate(units))
    mean = sum(r for r, _, _ in flat) / len(flat)
    lines.append(f"units: {len(flat)}, mean RR {mean:.3f}, min {flat[0][0]:.3f} (layer {flat[0][1]} unit "
                 f"{flat[0][2]}), max {flat[-1][0]:.3f} (layer {flat[-1][1]} unit {flat[-1][2]})")
    return "\n".join(lines)


def write_json(data: dict, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def plot_heatmap(profile: RecencyProfile, path: str | os.PathLike) -> None:
    """Two panels: layers x KV units (the replacement unit) and layers x query heads, colour = RR at the window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = profile.window
    units = torch.tensor(profile.unit_rr[w])
    heads = torch.tensor(profile.head_rr[w])
    height = max(4.0, 0.22 * profile.num_layers + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.5 * profile.num_heads, height),
                             gridspec_kw={"width_ratios": [max(profile.num_kv_heads, 2), profile.num_heads]})
    for ax, data, label in ((axes[0], units, "KV unit"), (axes[1], heads, "query head")):
        im = ax.imshow(data.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="upper")
        ax.set_xlabel(label)
        ax.set_ylabel("layer")
        ax.set_xticks(range(data.shape[1]))
        if data.shape[1] * data.shape[0] <= 400:
            for (i, j), value in ((ij, data[ij].item()) for ij in
                                  ((a, b) for a in range(data.shape[0]) for b in range(data.shape[1]))):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if value > 0.6 else "white")
    fig.subplots_adjust(wspace=0.35)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"recency ratio RR(k={w})")
    fig.suptitle(f"{profile.model or profile.family}: attention mass on the last {w}+1 keys "
                 f"({profile.num_sequences} x {profile.seq_len} tokens)", fontsize=9)
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)


def mean_unit_rr(profile: RecencyProfile) -> float:
    flat = [x for row in profile.units() for x in row]
    return sum(flat) / len(flat) if flat else math.nan
