"""Decode speed of one model: ms per generated token with the prefill cancelled out.

    decode_ms_per_token(model, ids, new=128, repeats=3)["ms_per_token"]

Used by `slimkv bench decode` (bench/decode.py) and by the RecurFormer experiment (recurformer/experiments.py), so
both quote the same measurement: the median over `repeats` of (t(generate new) - t(generate 1)) / (new - 1), greedy,
no early stop, the device synchronised around each call (generate() includes host work).
"""
from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn, device) -> float:
    """Wall seconds of one call, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def greedy_generate(model, ids: torch.Tensor, new: int, **kwargs):
    """Exactly `new` greedy tokens after `ids` (no early stop)."""
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0, **kwargs)


def decode_ms_per_token(model, ids: torch.Tensor, new: int, repeats: int, kwargs_fn=dict, warmup: bool = False
                        ) -> dict:
    """Median over `repeats` of (t(new) - t(1)) / (new - 1): the prefill cancels out. kwargs_fn() gives each
    generate() call its extra arguments (a fresh static cache for Llama's best path). warmup: one untimed
    generate(1) and generate(new) first, so Triton compiles, CUDA-graph captures and any other first-call cost of
    either land outside the timings (a cold first t(1) inflates the first run's t(1), so its ms/token reads low:
    2.3 against 5.0 for the other runs of docs/recurformer.md's Qwen row before this warmed both)."""
    if new < 2:
        raise ValueError(f"decode_ms_per_token needs new >= 2 tokens, got {new}")
    device = ids.device
    if warmup:
        greedy_generate(model, ids, 1, **kwargs_fn())
        greedy_generate(model, ids, new, **kwargs_fn())
    full, one = [], []
    for _ in range(repeats):
        one.append(timed_call(lambda: greedy_generate(model, ids, 1, **kwargs_fn()), device))
        full.append(timed_call(lambda: greedy_generate(model, ids, new, **kwargs_fn()), device))
    per_token = [(f - o) / (new - 1) * 1e3 for f, o in zip(full, one)]
    return {"ms_per_token": statistics.median(per_token), "ms_per_token_runs": per_token,
            "prefill_s": statistics.median(one), "tokens_per_s": ids.shape[0] * 1e3 / statistics.median(per_token)}
