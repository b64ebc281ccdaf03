"""Which KV units a conversion replaces: ranked by a score (recency ratio, or learned gates), or at random.

Rule (docs/recurformer.md, "Selection"): units are KV groups; rank them globally by score, replace a fraction `ratio`
(or every unit with score >= `threshold`), keeping at least one attention unit per layer. Scores:

    recency   RR of the unit's query heads at window k (recurformer/profile.py): attention mass on the last k + 1 keys
    learned   1 - alpha of the unit's gate between full and streaming attention, trained DuoAttention-style
              (`slimkv recurformer train` stage gates, recurformer/train.py): low alpha = streams well
    random    a seeded shuffle at the same budget (the ablation of both)
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Literal, get_args

from ..config import Range

Strategy = Literal["recency", "learned", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class Fraction(Range):
    """A `Range` written as the interval it is: "--ratio must be in [0, 1), got 1.0"."""

    def describe(self) -> str:
        return f"in [{self.ge:g}, {self.lt:g})"


def fraction_field(default: float | None = None) -> Any:
    """A field holding a fraction in [0, 1) (the share of KV units a conversion replaces)."""
    return dataclasses.field(default=default, metadata={"range": Fraction(ge=0.0, lt=1.0)})


def select_units(unit_scores: list[list[float]], ratio: float | None = None, threshold: float | None = None,
                 strategy: str = "recency", seed: int = 0, allow_empty_layers: bool = False) -> list[list[int]]:
    """Which units of each layer to replace. unit_scores [L][U], higher = replaced first. Sorted units per layer."""
    if (ratio is None) == (threshold is None):
        raise ValueError("give exactly one of ratio and threshold")
    if ratio is not None and not (0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1) (a fraction of KV units to replace); got {ratio}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    num_layers, num_units = len(unit_scores), len(unit_scores[0])
    wants_any = (ratio or 0) > 0 or threshold is not None
    if num_units == 1 and wants_any and not allow_empty_layers:
        raise ValueError(
            "every layer of this model has a single KV unit: replacing it would remove all attention of that layer "
            "(the model would become purely recurrent there); pass --allow-empty-layers to do it anyway"
        )
    min_kept = 0 if allow_empty_layers else 1
    flat = [(unit_scores[l][u], l, u) for l in range(num_layers) for u in range(num_units)]
    target = int(round(ratio * len(flat))) if ratio is not None else sum(1 for s, _, _ in flat if s >= threshold)
    if strategy == "random":
        ranked = list(flat)
        random.Random(seed).shuffle(ranked)
    else:
        ranked = sorted(flat, key=lambda t: (-t[0], t[1], t[2]))
        if threshold is not None:
            ranked = [t for t in ranked if t[0] >= threshold]
    chosen: list[list[int]] = [[] for _ in range(num_layers)]
    count = 0
    for _, layer, unit in ranked:
        if count >= target:
            break
        if num_units - len(chosen[layer]) - 1 >= min_kept:
            chosen[layer].append(unit)
            count += 1
    return [sorted(units) for units in chosen]


def learned_scores(path: str | Path, num_layers: int, num_units: int) -> list[list[float]]:
    """unit_scores of a gates.json (the export of a stage-gates run), checked against the model's shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gates file not found: {path} (train one with `slimkv recurformer train ... "
                                "--recurformer.stage=gates`; it writes <run>/model/gates.json)")
    try:
        scores = json.loads(path.read_text())["unit_scores"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a gates.json (no unit_scores)") from None
    if len(scores) != num_layers or any(len(row) != num_units for row in scores):
        raise ValueError(f"{path} has gates for {len(scores)} layers x {len(scores[0]) if scores else 0} units; the "
                         f"model has {num_layers} x {num_units}")
    return scores
