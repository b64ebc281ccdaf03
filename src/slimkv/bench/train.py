"""`slimkv bench train`: training throughput of Rodimus, Rodimus+, the Mamba2 and GLA baselines and a
parameter-matched Llama on one GPU.

legend: B batch, T sequence length, d width, L layers, e DDTS inner width, m memory size

Every (model, T) runs in a fresh subprocess (a clean allocator; an out-of-memory batch cannot poison the next): the
model is built on the GPU in float32 and trained on random tokens with bf16 autocast and fused AdamW. The batch is the
largest that fits: peak memory at B = 1 and 2 gives a line (static bytes + bytes per sample), the predicted batch is
tried and shrunk on out-of-memory. Activation checkpointing ("auto") is switched on only when B = 1 does not fit
without it. After `warmup` steps, `steps` steps are timed (CUDA-synchronised wall clock; the median is reported). At
the profiled lengths one more step runs under torch.profiler and its kernels are summed by category (`categorize`).

Before the models, a check worker runs every fused kernel against its spec on the device (bench/fused_checks.py) and
times each op against the unfused torch code. Results go to `out`/train_bench.json (rewritten after every config)
and train_bench.png; `format_table` renders the summary the CLI prints last.

MFU = model FLOPs per token (`flops_per_token`: 3x the forward's matmul, conv, recurrence and causal-attention FLOPs;
activation recomputation not counted) x tokens/s / the bf16 matmul rate measured on the device (8192^3).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

from ..config import ranged, setting
from ..io import atomic_write_text
from ..machine import git_commit
from .harness import machine_header, write_json, write_png

logger = logging.getLogger(__name__)

SCHEMA = "slimkv.bench.train/1"
VOCAB = 126464
RODIMUS_SHAPES = {
    # Rodimus-1.4B: d 2048, 48 layers, m 64, expand 2 (1.53B parameters with the tied 126k embedding)
    "rodimus": dict(block_type="rodimus", hidden_size=2048, num_hidden_layers=48, mem_size=64, expand_ratio=2.0),
    # Rodimus+-1.6B: 24 layers, 16 SW-SKA heads, window 4096 (docs/rodimus.md section 5)
    "rodimus_plus": dict(block_type="rodimus_plus", hidden_size=2048, num_hidden_layers=24, mem_size=64,
                         expand_ratio=2.0, num_heads=16, window_size=4096),
    # the baselines of the evaluation issue on the same scaffolding, at configs/1.4b.yaml's matched depths: Mamba2
    # (SSD, state 64, heads of 64 over the 2x inner width) and GLA (16 heads of per-channel decay)
    "mamba2": dict(block_type="mamba2", hidden_size=2048, num_hidden_layers=50, mem_size=64, expand_ratio=2.0),
    "gla": dict(block_type="gla", hidden_size=2048, num_hidden_layers=38, mem_size=64, expand_ratio=2.0,
                num_heads=16),
}
LLAMA_SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16)
# Llama matched in parameters to which Rodimus model
LLAMA_MATCH = {"llama": "rodimus", "llama_plus": "rodimus_plus"}
MODELS = tuple(RODIMUS_SHAPES) + tuple(LLAMA_MATCH)
# CPU tests: the same code paths on toy widths
TINY = {"vocab": 512, "rodimus": dict(hidden_size=64, num_hidden_layers=2, mem_size=16),
        "rodimus_plus": dict(hidden_size=64, num_hidden_layers=2, mem_size=16, num_heads=2, window_size=16),
        "mamba2": dict(hidden_size=64, num_hidden_layers=2, mem_size=16),
        "gla": dict(hidden_size=64, num_hidden_layers=2, mem_size=16, num_heads=2),
        "llama": dict(hidden_size=64, intermediate_size=176, num_attention_heads=2, num_key_value_heads=2)}
# kernel-name substrings (lower case) per category; the first category that matches wins
CATEGORIES = (
    ("gla", ("gla_",)),
    ("norm", ("rms_norm", "layer_norm")),
    # before conv: cuDNN's fused attention kernels are named cudnn_..._sdpa_..._flash_...
    ("attention", ("sdpa", "flash", "fmha", "attention", "triton_tem", "flex")),
    ("conv", ("conv_silu", "conv1d", "conv2d", "depthwise", "convolution", "cudnn")),
    ("loss", ("ce_fwd_kernel", "ce_bwd_kernel", "cross_entropy", "nll_loss", "log_softmax", "softmax")),
    ("optimizer", ("adam", "multi_tensor_apply", "foreach")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "wgmma", "cublas", "matmul", "splitk")),
    ("casts/copies", ("copy", "cast", "memcpy", "memset", "catarray", "fill")),
    ("reduction", ("reduce_kernel", "reduction", "triton_red", "triton_per")),
    ("elementwise", ("elementwise", "ddts_gates", "swiglu", "triton_poi", "pointwise")),
)
CATEGORY_NAMES = tuple(name for name, _ in CATEGORIES) + ("other",)


def parse_compare(text: str) -> dict:
    """"KEY=VALUE[,KEY=VALUE]" -> one variant's overrides (parse_overrides)."""
    return parse_overrides(text.split(","))


@dataclass
class TrainBenchOptions:
    """What `run_train_bench` measures. Rodimus overrides are RodimusConfig keyword arguments (e.g. a fused-path
    switch), applied to every Rodimus / Rodimus+ model; each `compare` entry adds one more variant of them."""

    # the run folder for train_bench.json and train_bench.png
    out: str = setting("runs/bench/train", metavar="DIR")
    # models to time: rodimus, rodimus_plus, mamba2, gla, llama, llama_plus
    models: tuple[str, ...] = ("rodimus", "rodimus_plus", "llama")
    # sequence lengths, run in this order (the two target lengths first, so a run cut by the budget loses
    # 8192 first)
    seqs: tuple[int, ...] = ranged((2048, 16384, 8192), ge=1)
    # candidate batches, the largest that fits wins (none = predicted from the peak memory at batch 1 and 2)
    batches: Optional[tuple[int, ...]] = None
    max_batch: int = ranged(64, ge=1)
    # timed steps per config (median reported)
    steps: int = ranged(3, ge=1)
    warmup: int = ranged(1, ge=0)
    # seconds before later configs are skipped
    budget_s: float = setting(300.0, flags=("--budget",), gt=0)
    # skip the kernel checks and op timings
    check: bool = setting(True, flags=("--no-check",))
    # only check the fused kernels on the GPU
    check_only: bool = setting(False, flags=("--check",))
    # the per-op timings beside the checks
    op_timings: bool = setting(True, flags=("--no-op-timings",))
    # lengths whose step is broken down by kernel category (--profile-seqs with no value: none)
    profile_seqs: tuple[int, ...] = setting((2048,), allow_empty=True)
    # activation checkpointing (auto: only when batch 1 does not fit without)
    checkpointing: Literal["auto", "on", "off"] = "auto"
    # RodimusConfig override for every Rodimus model, KEY=VALUE (repeatable)
    overrides: dict[str, Any] = setting(default_factory=dict, flags=("--set",), metavar="KEY=VALUE")
    # also time each Rodimus model with these overrides on top of --set, KEY=VALUE[,KEY=VALUE]
    compare: tuple[dict[str, Any], ...] = setting((), parse=parse_compare, each=True, metavar="KEY=VALUE[,...]")
    # torch.compile every decoder layer
    compile: bool = False
    # "cpu" + tiny only for the test suite
    device: str = "cuda"
    tiny: bool = False

    def __post_init__(self) -> None:
        # values from the command line arrive as text: numbers, true/false and null become values
        self.overrides = {k: _override_value(v) if isinstance(v, str) else v for k, v in self.overrides.items()}


def model_config(name: str, seq: int, overrides: dict | None = None, llama_layers: int | None = None,
                 tiny: bool = False):
    """The HF config of a benchmark model at sequence length `seq`."""
    vocab = TINY["vocab"] if tiny else VOCAB
    positions = max(seq, 2048)
    if name in RODIMUS_SHAPES:
        from slimkv import RodimusConfig

        shape = {**RODIMUS_SHAPES[name], **(TINY[name] if tiny else {}), **(overrides or {})}
        return RodimusConfig(vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=positions, **shape)
    if name not in LLAMA_MATCH:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    from transformers import LlamaConfig

    shape = TINY["llama"] if tiny else LLAMA_SHAPE
    return LlamaConfig(vocab_size=vocab, num_hidden_layers=llama_layers or 1, max_position_embeddings=positions,
                       tie_word_embeddings=True, attn_implementation="sdpa", **shape)


def build_model(config) -> nn.Module:
    if config.model_type == "llama":
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(config)
    from slimkv import RodimusForCausalLM

    return RodimusForCausalLM(config)


def count_params(config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(config).parameters())


def matched_llama_layers(rodimus_name: str, tiny: bool = False) -> tuple[int, int, int]:
    """(Llama depth whose parameter count is closest to the Rodimus model's, Rodimus params, that Llama's params);
    same width, vocabulary and tied embeddings."""
    target = count_params(model_config(rodimus_name, 2048, tiny=tiny))
    one, two = (count_params(model_config("llama", 2048, llama_layers=n, tiny=tiny)) for n in (1, 2))
    per_layer, base = two - one, one - (two - one)
    layers = max(1, round((target - base) / per_layer))
    return layers, target, base + layers * per_layer


def mean_keys(seq: int, window: int | None) -> float:
    """Keys a causal query sees on average over positions 0..seq-1 (itself included), with at most `window`
    previous ones."""
    if window is None or window >= seq:
        return (seq + 1) / 2
    # positions < window see t + 1 keys, the rest window + 1
    return (window * (window + 1) / 2 + (seq - window) * (window + 1)) / seq


def flops_per_token(config, seq: int) -> float:
    """Training FLOPs per token: 3x the forward's 2 FLOPs per multiply-add of every Linear (the tied LM head too) and
    depthwise conv tap, the recurrence (4 FLOPs per element of the mixer's state: update and readout; m e for
    Rodimus, heads x state x head dim for Mamba2, heads x key x value dim for GLA) and causal attention (4 d ctx)."""
    with torch.device("meta"):
        model = build_model(config)
    fwd = 0.0
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            fwd += 2 * mod.in_features * mod.out_features
        elif isinstance(mod, nn.Conv1d):
            fwd += 2 * mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0]
    L, d = config.num_hidden_layers, config.hidden_size
    if config.model_type == "llama":
        fwd += L * 4 * d * mean_keys(seq, None)
    else:
        state = model.model.layers[0].mixer.state_shapes(1)["ssm_state"]
        fwd += L * 4 * math.prod(state)
        if config.block_type == "rodimus_plus":
            fwd += L * 4 * d * mean_keys(seq, config.window)
    return 3 * fwd


def categorize(kernel: str) -> str:
    """Kernel-time category of a CUDA kernel name (see CATEGORIES); "other" when nothing matches."""
    # PyTorch's strided elementwise kernels are templated on gpu_kernel_impl_nocast: that "cast" names no cast
    # (a mul over non-contiguous views read as casts/copies before; benchmarks/results/train_mamba2_vs_rodimus_*)
    name = kernel.lower().replace("_impl_nocast", "_impl")
    for category, needles in CATEGORIES:
        if any(n in name for n in needles):
            return category
    return "other"


def breakdown(kernels: dict[str, tuple[float, int]], step_ms: float | None = None) -> dict:
    """{kernel name: (device ms, launches)} -> ms, share and top kernels per category."""
    cats = {c: {"ms": 0.0, "launches": 0, "top": []} for c in CATEGORY_NAMES}
    for name, (ms, count) in kernels.items():
        c = cats[categorize(name)]
        c["ms"] += ms
        c["launches"] += count
        c["top"].append((ms, name[:100]))
    total = sum(c["ms"] for c in cats.values())
    for c in cats.values():
        c["share"] = c["ms"] / total if total else 0.0
        c["top"] = [{"kernel": n, "ms": round(ms, 3)} for ms, n in sorted(c["top"], reverse=True)[:4]]
    return {"categories": cats, "kernel_ms": total, "launches": sum(c["launches"] for c in cats.values()),
            "step_ms": step_ms}


def choose_batch(peak_1: int, peak_2: int, capacity: int, max_batch: int) -> int:
    """Largest B with peak_1 + (B - 1) (peak_2 - peak_1) <= capacity (peak memory is linear in B)."""
    per_sample = max(peak_2 - peak_1, 1)
    return max(1, min(max_batch, 1 + int((capacity - peak_1) // per_sample)))


def _override_value(text: str):
    """true/false, null/none, int, float, else the string itself (no YAML: the GPU image may lack PyYAML)."""
    words = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict:
    """["key=value", ...] -> {key: value} with numbers, true/false, null and strings."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must be KEY=VALUE")
        out[key.strip()] = _override_value(value.strip())
    return out


def unknown_override_keys(overrides: dict) -> list[str]:
    """Keys RodimusConfig does not declare (it accepts any keyword, so a typo would silently do nothing)."""
    import inspect

    from slimkv import RodimusConfig

    known = set(inspect.signature(RodimusConfig.__init__).parameters)
    return sorted(k for k in overrides if k not in known)


def variants(model: str, opts: TrainBenchOptions) -> list[tuple[str, dict]]:
    if model not in RODIMUS_SHAPES:
        return [(model, {})]
    out = [(model, dict(opts.overrides))]
    for extra in opts.compare:
        label = ",".join(f"{k}={v}" for k, v in extra.items())
        out.append((f"{model}[{label}]", {**opts.overrides, **extra}))
    return out


def commit_hash() -> str:
    """The real commit (slimkv/machine.py: SLIMKV_COMMIT, else git), or "unknown"."""
    return git_commit() or "unknown"


def device_meta(device: torch.device) -> dict:
    """The shared machine header of this device (versions, device name, SMs, memory)."""
    return machine_header(device)


# the worker side: runs inside the subprocess

def _release():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def throughput_worker(spec: dict, log: Callable[[str], None], save: Callable[[dict], None]) -> dict:
    """One (model, variant, T): batch search, timed steps, optional profile. `save` persists partial results."""
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    # this process's own matrix rate, for MFU when no check worker measured one
    matmul_rate = None
    if cuda:
        from .fused_checks import matmul_rate as measure_matmul_rate

        matmul_rate = measure_matmul_rate()
        _release()
    config = model_config(spec["model"], spec["seq"], spec["overrides"], spec.get("llama_layers"), spec["tiny"])
    with torch.device(device):
        model = build_model(config)
    model.train()
    result = {"model": spec["model"], "variant": spec["variant"], "seq": spec["seq"], "overrides": spec["overrides"],
              "params": sum(p.numel() for p in model.parameters()), "layers": config.num_hidden_layers,
              "flops_per_token": flops_per_token(config, spec["seq"]), "meta": device_meta(device),
              "bf16_flop_per_s": matmul_rate}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    if spec["compile"]:
        for layer in model.model.layers:
            layer.compile()
    vocab = config.vocab_size
    T = spec["seq"]

    # slimkv models train on shifted targets through the chunked loss (models/modeling.py), as slimkv train does;
    # HF Llama gets its labels; both see T input tokens
    fused_loss = "targets" in inspect.signature(model.forward).parameters

    def step(B: int) -> float:
        ids = torch.randint(0, vocab, (B, T + 1), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if fused_loss:
                loss = model(input_ids=ids[:, :-1], targets=ids[:, 1:]).loss
            else:
                loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def peak_of(B: int) -> int | None:
        """Peak bytes of one step at batch B, or None when it runs out of memory."""
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out_of_memory = False
        try:
            step(B)
            if cuda:
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # outside the except clause: its traceback (and the failed step's tensors) is gone by now
            opt.zero_grad(set_to_none=True)
            _release()
            return None
        return torch.cuda.max_memory_allocated() if cuda else 0

    def checkpoint_activations():
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    checkpointing = spec["checkpointing"] == "on"
    if checkpointing:
        checkpoint_activations()
    t0 = time.perf_counter()
    peak_1 = peak_of(1)
    if peak_1 is None and spec["checkpointing"] == "auto":
        log("batch 1 does not fit: activation checkpointing on")
        checkpointing = True
        checkpoint_activations()
        peak_1 = peak_of(1)
    if peak_1 is None:
        result["error"] = "out of memory at batch 1"
        return result
    log(f"batch 1: {peak_1 / 2**30:.1f} GiB peak, first step {time.perf_counter() - t0:.1f} s (compilation included)")
    if spec["batches"]:
        batch = next((B for B in sorted(spec["batches"], reverse=True) if peak_of(B) is not None), None)
        if batch is None:
            result["error"] = f"out of memory at every batch in {spec['batches']}"
            return result
    elif not cuda:
        batch = 1
    else:
        peak_2 = peak_of(2)
        capacity = int(torch.cuda.get_device_properties(device).total_memory * spec.get("memory_fraction", 0.92))
        if peak_2 is None:
            batch = 1
        else:
            batch = choose_batch(peak_1, peak_2, capacity, spec["max_batch"])
            result["memory_model"] = {"static_gib": (2 * peak_1 - peak_2) / 2**30,
                                      "per_sample_gib": (peak_2 - peak_1) / 2**30, "capacity_gib": capacity / 2**30}
            while batch > 2 and peak_of(batch) is None:
                log(f"batch {batch} ran out of memory")
                batch = max(2, int(batch * 0.85))
    result.update(batch=batch, checkpointing=checkpointing)
    log(f"batch {batch}{' (checkpointing)' if checkpointing else ''}: timing {spec['steps']} steps")
    for _ in range(spec["warmup"]):
        step(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        loss = step(batch)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    result.update(step_s=step_s, step_times_s=times, tokens_per_s=batch * T / step_s, loss=float(loss),
                  peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)
    log(f"{result['tokens_per_s']:.0f} tokens/s, {step_s:.3f} s/step, peak "
        f"{result['peak_mem_gib'] or 0:.1f} GiB")
    save(result)
    if spec["profile"] and cuda:
        result["profile"] = profile_step(lambda: step(batch), step_s * 1e3)
        top = sorted(result["profile"]["categories"].items(), key=lambda kv: -kv[1]["ms"])[:5]
        log("profile: " + ", ".join(f"{c} {v['share'] * 100:.0f}%" for c, v in top))
    return result


def profile_step(step: Callable[[], object], step_ms: float) -> dict:
    """Device time per kernel of one step under torch.profiler, summed by category."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = {}
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if us > 0:
            kernels[ev.key] = (us / 1e3, ev.count)
    return breakdown(kernels, step_ms)


def check_worker(spec: dict, log: Callable[[str], None], save: Callable[[dict], None]) -> dict:
    from . import fused_checks

    device = torch.device(spec["device"])
    result = {"meta": device_meta(device)}
    if device.type == "cuda":
        result["ceilings"] = {"copy_bytes_per_s": fused_checks.copy_bandwidth(),
                              "bf16_flop_per_s": fused_checks.matmul_rate()}
        log(f"ceilings: copy {result['ceilings']['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul "
            f"{result['ceilings']['bf16_flop_per_s'] / 1e12:.0f} TFLOP/s")
    result["checks"] = fused_checks.run_checks(spec["scale"], log, gla=spec.get("gla", True))
    save(result)
    if spec.get("timings") and device.type == "cuda":
        result["op_timings"] = fused_checks.run_op_timings(result["ceilings"]["copy_bytes_per_s"], log)
    return result


WORKERS = {"throughput": throughput_worker, "check": check_worker}


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="slimkv bench train worker (one subprocess per config)")
    parser.add_argument("--worker", required=True, help="JSON spec")
    parser.add_argument("--result", required=True, help="where the result JSON goes")
    args = parser.parse_args(argv)
    spec = json.loads(args.worker)
    path = Path(args.result)
    prefix = spec.get("label", spec["kind"])

    def log(msg: str) -> None:
        # the worker's stderr is its log channel: the parent (_run_worker) forwards each line to its own log
        print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)

    def save(result: dict) -> None:
        atomic_write_text(path, json.dumps(result, default=str))

    try:
        save(WORKERS[spec["kind"]](spec, log, save))
    except Exception as exc:
        save({"error": f"{type(exc).__name__}: {str(exc)[:600]}"})
        raise
    return 0


# the parent side

def _run_worker(spec: dict, timeout: float, log: Callable[[str], None], workdir: Path) -> dict:
    """Spawn `python -m slimkv.bench.train --worker ...`, forward its stderr lines to log, return its result."""
    result_path = workdir / f"{len(list(workdir.iterdir()))}_{spec['kind']}.json"
    env = os.environ.copy()
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # fewer fragmentation out-of-memory errors at the largest batch, for every model alike
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cmd = [sys.executable, "-m", "slimkv.bench.train", "--worker", json.dumps(spec), "--result", str(result_path)]
    tail: deque[str] = deque(maxlen=30)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    prefix = f"[{spec['label']}]"

    def forward():
        for line in proc.stderr:
            line = line.rstrip()
            tail.append(line)
            if line.startswith(prefix):
                log(line)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        timed_out = True
    reader.join(timeout=5)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if timed_out:
        result["error"] = f"killed after {timeout:.0f} s (time budget)"
    elif proc.returncode != 0 and "error" not in result:
        result["error"] = f"worker exited {proc.returncode}: " + " | ".join(list(tail)[-6:])[-600:]
    if proc.returncode != 0 and "error" in result:
        result["stderr_tail"] = list(tail)[-12:]
    return result


def run_train_bench(opts: TrainBenchOptions, log: Callable[[str], None] = logger.info) -> dict:
    """Checks, then every (T, model, variant) within the time budget; writes JSON + PNG under opts.out, returns the
    report (see format_table)."""
    import tempfile

    for name in opts.models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if opts.checkpointing not in ("auto", "on", "off"):
        raise ValueError(f"checkpointing must be auto, on or off; got {opts.checkpointing!r}")
    if opts.steps < 1 or any(t < 1 for t in opts.seqs):
        raise ValueError("steps and sequence lengths must be at least 1")
    start = time.time()
    deadline = start + opts.budget_s
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"schema": SCHEMA, "commit": commit_hash(), "header": machine_header(opts.device),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "options": asdict(opts), "results": []}
    unknown = unknown_override_keys({k: v for extra in (opts.overrides, *opts.compare) for k, v in extra.items()})
    if unknown:
        report["override_keys_not_in_rodimus_config"] = unknown
        log(f"note: {', '.join(unknown)} are not RodimusConfig arguments (kept as plain config attributes)")
    matches = {}
    for llama, rodimus in LLAMA_MATCH.items():
        if llama in opts.models:
            matches[llama] = matched_llama_layers(rodimus, opts.tiny)
            log(f"{llama}: {matches[llama][0]} layers, {matches[llama][2] / 1e9:.3f} B parameters, matched to "
                f"{rodimus} ({matches[llama][1] / 1e9:.3f} B)")
    report["llama_match"] = {k: {"layers": v[0], "rodimus_params": v[1], "llama_params": v[2]}
                             for k, v in matches.items()}
    json_path, png_path = out / "train_bench.json", out / "train_bench.png"

    def write():
        write_json(json_path, report)

    with tempfile.TemporaryDirectory(prefix="slimkv-bench-train-") as tmp:
        workdir = Path(tmp)
        if opts.check or opts.check_only:
            spec = {"kind": "check", "label": "check", "device": opts.device, "scale": "tiny" if opts.tiny else "model",
                    "timings": opts.op_timings and not opts.check_only}
            report["check"] = _run_worker(spec, min(deadline - time.time(), 240.0), log, workdir)
            report["meta"] = report["check"].get("meta")
            checks = report["check"].get("checks", [])
            report["checks_passed"] = sum(bool(c.get("passed")) for c in checks)
            report["checks_total"] = len(checks)
            write()
        if not opts.check_only:
            for seq in opts.seqs:
                for model in opts.models:
                    for label, overrides in variants(model, opts):
                        row_label = f"{label} T{seq}"
                        if time.time() > deadline - 10:
                            report["results"].append({"model": model, "variant": label, "seq": seq,
                                                      "error": "skipped: time budget spent"})
                            log(f"[{row_label}] skipped: time budget spent")
                            continue
                        spec = {"kind": "throughput", "label": row_label, "model": model, "variant": label,
                                "overrides": overrides, "seq": seq,
                                "llama_layers": matches[model][0] if model in matches else None,
                                "batches": list(opts.batches) if opts.batches else None,
                                "max_batch": opts.max_batch, "steps": opts.steps, "warmup": opts.warmup,
                                "profile": seq in opts.profile_seqs, "checkpointing": opts.checkpointing,
                                "compile": opts.compile, "device": opts.device, "tiny": opts.tiny}
                        row = _run_worker(spec, min(deadline - time.time(), 180.0), log, workdir)
                        row.setdefault("model", model)
                        row.setdefault("variant", label)
                        row.setdefault("seq", seq)
                        report["results"].append(row)
                        report.setdefault("meta", row.get("meta"))
                        write()
    finish_report(report)
    write()
    try:
        write_png(png_path, plot_figure(report))
    except Exception as exc:  # the JSON is what matters; a plotting failure is recorded, not raised
        report["plot_error"] = f"{type(exc).__name__}: {exc}"
        write()
    report["files"] = [str(json_path), str(png_path)]
    report["elapsed_s"] = time.time() - start
    write()
    return report


def finish_report(report: dict) -> None:
    """MFU and the ratio to the matched Llama at the same T, per result row."""
    ceilings = (report.get("check") or {}).get("ceilings") or {}
    report["mfu_peak_flop_per_s"] = ceilings.get("bf16_flop_per_s")
    by_seq = {}
    for r in report["results"]:
        if r.get("tokens_per_s"):
            by_seq.setdefault(r["seq"], {})[r["variant"]] = r
    for r in report["results"]:
        if not r.get("tokens_per_s"):
            continue
        peak = report["mfu_peak_flop_per_s"] or r.get("bf16_flop_per_s")
        r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / peak if peak else None
        llama_name = {"rodimus": "llama", "rodimus_plus": "llama_plus"}.get(r["model"])
        same = by_seq[r["seq"]]
        ref = same.get(llama_name) or same.get("llama")
        if ref is not None and ref is not r and r["model"] in RODIMUS_SHAPES:
            r["vs_llama"] = {"llama": ref["variant"], "tokens_per_s_ratio": r["tokens_per_s"] / ref["tokens_per_s"],
                             "params_ratio": r["params"] / ref["params"]}
            mm = r.get("memory_model")
            if mm and r.get("checkpointing") == ref.get("checkpointing"):
                # the memory target compares peaks at the same batch: this model's line at Llama's batch
                r["vs_llama"]["peak_gib_at_llama_batch"] = mm["static_gib"] + ref["batch"] * mm["per_sample_gib"]
                r["vs_llama"]["llama_peak_gib"] = ref.get("peak_mem_gib")


def format_table(report: dict) -> str:
    lines = []
    if "checks_total" in report:
        failed = [c for c in report["check"].get("checks", []) if not c.get("passed")]
        lines.append(f"fused kernel checks: {report['checks_passed']}/{report['checks_total']} passed"
                     + ("" if not failed else "; FAILED: " + ", ".join(
                         f"{c.get('op')} {c.get('dtype', '')}".strip() for c in failed[:8])))
        if report["check"].get("error"):
            lines.append(f"check worker: {report['check']['error']}")
    rows = sorted(report.get("results", []), key=lambda r: r["seq"])
    if rows:
        lines += ["", "| model | T | batch | ckpt | tokens/s | step s | peak GiB | MFU | vs Llama |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if not r.get("tokens_per_s"):
                lines.append(f"| {r['variant']} | {r['seq']} | - | - | {str(r.get('error', '?'))[:70]} | | | | |")
                continue
            mfu = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") else "-"
            vs = f"{r['vs_llama']['tokens_per_s_ratio']:.2f}x" if r.get("vs_llama") else "-"
            peak = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
            lines.append(f"| {r['variant']} | {r['seq']} | {r['batch']} | {'yes' if r['checkpointing'] else 'no'} | "
                         f"{r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | {peak} | {mfu} | {vs} |")
    profiled = [r for r in rows if r.get("profile")]
    if profiled:
        lines += ["", "kernel time per step, ms (share):",
                  "| category | " + " | ".join(f"{r['variant']} T{r['seq']}" for r in profiled) + " |",
                  "|---|" + "---|" * len(profiled)]
        for c in CATEGORY_NAMES:
            cells = [f"{r['profile']['categories'][c]['ms']:.1f} ({r['profile']['categories'][c]['share'] * 100:.0f}%)"
                     for r in profiled]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("| launches | " + " | ".join(str(r["profile"]["launches"]) for r in profiled) + " |")
    if report.get("files"):
        lines += ["", "wrote " + " and ".join(report["files"])]
    return "\n".join(lines)


def plot_png(report: dict) -> bytes:
    """`plot_figure` as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = plot_figure(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_figure(report: dict):
    """Tokens/s per model and T (left) and the profiled steps' kernel time by category (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("results", []) if r.get("tokens_per_s")]
    profiled = [r for r in rows if r.get("profile")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    seqs = sorted({r["seq"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ys = [next((r["tokens_per_s"] for r in rows if r["variant"] == name and r["seq"] == s), 0) for s in seqs]
        axes[0].bar([j + i * width for j in range(len(seqs))], ys, width, label=name)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(seqs))], [f"T {s}" for s in seqs])
    axes[0].set_ylabel("training tokens/s (largest batch that fits)")
    axes[0].legend(fontsize=8)
    axes[0].grid(axis="y", alpha=0.3)
    device = (report.get("meta") or {}).get("device_name", "?")
    axes[0].set_title(f"{device}, bf16 autocast, commit {str(report.get('commit', ''))[:10]}", fontsize=9)
    bottoms = [0.0] * len(profiled)
    for c in CATEGORY_NAMES:
        ms = [r["profile"]["categories"][c]["ms"] for r in profiled]
        if any(ms):
            # eleven categories: tab20 keeps every one its own colour (tab10 repeats the first)
            axes[1].bar(range(len(profiled)), ms, 0.6, bottom=bottoms, label=c,
                        color=plt.cm.tab20(CATEGORY_NAMES.index(c) % 20))
            bottoms = [b + m for b, m in zip(bottoms, ms)]
    axes[1].set_xticks(range(len(profiled)), [f"{r['variant']}\nT{r['seq']} B{r['batch']}" for r in profiled],
                       fontsize=7)
    axes[1].set_ylabel("kernel time per step (ms)")
    axes[1].set_title("one training step by kernel category (torch.profiler)", fontsize=9)
    if profiled:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(worker_main())
