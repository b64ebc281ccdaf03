"""`slimkv bench decode`: generation speed of Rodimus-1.4B and Rodimus+-1.6B shapes against a matched HF Llama.

    PYTHONPATH=src python3 -m slimkv.cli.main bench decode --out $OUT            # one GPU, about 6 minutes
    slimkv bench decode --device cpu --models rodimus --contexts 256 --batches 1  # tiny CPU run (tokens/s)

What is measured, each model in bf16 with random weights (vocab 126,464, batch 1 unless said):
- ms/token of decode at each context length: (time of generate(n new) - time of generate(1 new)) / (n - 1), the
  median of --repeats runs, so the prefill cancels out; greedy, no early stop.
- prefill seconds and peak memory at each context (Rodimus prefills in chunks, models/generation.py).
- batch-B tokens/s at one context, and the largest batch whose cache fits at --capacity-context, found from the
  measured bytes per sequence and the free memory, then confirmed by allocating that cache and timing decode steps
  on it (the states hold random values there: a recurrent step costs the same whatever it holds).
- HF Llama twice: its default generate() (dynamic cache, SDPA) and its best path (static cache + torch.compile of
  the decode step, CompileConfig(fullgraph=True, mode="reduce-overhead")).
- first-call warm-up of slimkv's generate (Triton compiles, graph capture) and a per-kernel profile of one step.
- --check: every fused decode kernel against its spec on fresh random inputs, and graph decode == eager decode
  token for token for each model kind (plain and left-padded batches).
Writes decode.json (+ decode.png) under --out after every section, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

import torch

from ..config import ranged, setting
from ..eval.speed import decode_ms_per_token, greedy_generate as _generate, timed_call as _timed
from .harness import machine_header, sync, write_json, write_png

logger = logging.getLogger(__name__)

VOCAB = 126464
HIDDEN = 2048


@dataclass
class DecodeBenchConfig:
    """`slimkv bench decode`: which models, contexts and sections `run_decode_bench` measures."""

    # the run folder for decode.json and decode.png
    out: str = setting("runs/bench/decode", metavar="DIR")
    # auto = cuda when a GPU is visible, else cpu
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # models to time: rodimus, rodimus_plus, llama
    models: tuple[str, ...] = ("rodimus", "rodimus_plus", "llama")
    # prompt lengths at batch 1
    contexts: tuple[int, ...] = ranged((1024, 8192, 32768, 131072), ge=1)
    # Llama's prompt lengths (none = the contexts up to 32K)
    llama_contexts: tuple[int, ...] = ()
    # Llama's compiled path costs ~27 s of compilation per length; the targets compare it from 8K on
    llama_best_contexts: tuple[int, ...] = (8192, 32768)
    # tokens per timed call
    new_tokens: int = ranged(128, ge=2)
    # timed calls per measurement (the median is reported)
    repeats: int = ranged(3, ge=1)
    # the batched measurement's batch
    batch: int = ranged(16, ge=1)
    batch_context: int = ranged(8192, ge=1)
    capacity_context: int = ranged(32768, ge=1)
    # Llama's static cache + torch.compile path beside its default generate()
    llama_best: bool = True
    # every fused decode kernel against its spec, and graph decode == eager decode (GPU only)
    check: bool = True
    # a per-kernel profile of one step (none = on CUDA only)
    profile: Optional[bool] = None
    # seconds before later sections are skipped
    budget_s: float = setting(520.0, flags=("--budget",), gt=0)
    # CPU smoke runs: a small width and depth instead of the 1.4B shapes
    tiny: bool = False
    # torch CPU threads (0 = torch's choice)
    threads: int = ranged(0, ge=0)
    # per-model config overrides, e.g. {"llama": {"num_hidden_layers": 25}}
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "DecodeBenchConfig":
        """The device resolved and the derived defaults filled in (what the JSON records)."""
        from ..device import resolve_device

        device = resolve_device(self.device).type
        unknown = [m for m in self.models if m not in ("rodimus", "rodimus_plus", "llama")]
        if unknown:
            raise ValueError(f"bench decode: unknown model(s) {', '.join(unknown)}; choose rodimus, rodimus_plus, "
                             "llama")
        return replace(self, device=device,
                       llama_contexts=self.llama_contexts or tuple(c for c in self.contexts if c <= 32768),
                       profile=device == "cuda" if self.profile is None else self.profile)


def build_model(kind: str, max_positions: int, tiny: bool = False, **overrides):
    """The benchmark shapes: Rodimus-1.4B (48 layers), Rodimus+-1.6B (24 layers, W 4096), Llama 1.5B (24 layers);
    `overrides` replace any config field (e.g. num_hidden_layers=25 for the parameter-matched Llama)."""
    d = 256 if tiny else HIDDEN
    vocab = 4096 if tiny else VOCAB
    if kind in ("rodimus", "rodimus_plus"):
        from ..models import RodimusConfig, RodimusForCausalLM

        layers = (4 if kind == "rodimus" else 2) if tiny else (48 if kind == "rodimus" else 24)
        fields = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, block_type=kind, mem_size=64,
                      expand_ratio=2.0, num_heads=d // 128, window_size=256 if tiny else 4096,
                      tie_word_embeddings=True, max_position_embeddings=max_positions)
        return RodimusForCausalLM(RodimusConfig(**{**fields, **overrides}))
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        fields = dict(hidden_size=d, num_hidden_layers=2 if tiny else 24, num_attention_heads=d // 128,
                      num_key_value_heads=d // 128, intermediate_size=704 if tiny else 5632, vocab_size=vocab,
                      tie_word_embeddings=True, max_position_embeddings=max_positions, attn_implementation="sdpa")
        return LlamaForCausalLM(LlamaConfig(**{**fields, **overrides}))
    raise ValueError(f"bench decode: unknown model {kind!r}; choose rodimus, rodimus_plus or llama")


def prefill_stats(model, ids) -> dict:
    """Seconds and peak memory of filling the cache with the whole prompt (slimkv: chunked; Llama: one forward)."""
    device = ids.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)

    def run():
        with torch.no_grad():
            if hasattr(model, "allocate_cache"):
                model._fast_prefill(ids, None, model.allocate_cache(ids.shape[0]))
            else:
                model(ids, use_cache=True, logits_to_keep=1)

    seconds = _timed(run, device)
    out = {"prefill_s": seconds, "prefill_tokens_per_s": ids.numel() / seconds}
    if device.type == "cuda":
        out["prefill_peak_gib_over_weights"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    return out


def weight_floor_ms(model, copy_bytes_per_s: float) -> float:
    weights = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(weights.values()) / copy_bytes_per_s * 1e3


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus written (the decode floor's rate)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = [_timed(lambda: dst.copy_(src), device) for _ in range(10)]
    del src, dst
    return 2 * 2**30 / statistics.median(times)


# --- checks --------------------------------------------------------------------------------------------------------


def check_kernels(device) -> list[dict]:
    """Every fused decode kernel against its spec on fresh random inputs (float32 and bf16), output poisoned first."""
    from ..ops.decode import reference
    from ..ops.decode import triton as kernels
    from ..ops.rope import rope_inv_freq

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        B, e, m, r, K = 3, 4096, 64, 32, 4
        x = torch.randn(B, e, device=device).to(dtype)
        w = torch.randn(e, K, device=device).to(dtype)
        bias = torch.randn(e, device=device).to(dtype)
        state = torch.randn(B, e, K - 1, device=device).to(dtype)
        ref_state = state.clone()
        got = kernels.conv_silu_step(x, w, bias, state)
        want = reference.conv_silu_step(x, w, bias, ref_state)
        rows.append({"kernel": "conv_silu_step", "dtype": str(dtype), "rel_err": rel(got, want),
                     "state_equal": bool(torch.equal(state, ref_state))})
        args = dict(q=torch.randn(B, m, device=device).to(dtype), k=torch.randn(B, m, device=device).to(dtype),
                    gates=torch.randn(B, 2 * m, device=device), x=x, gate_hidden=torch.randn(B, r, device=device).to(dtype),
                    up_weight=(0.2 * torch.randn(e, r, device=device)).to(dtype),
                    up_bias=torch.randn(e, device=device).to(dtype), x_conv=torch.randn(B, e, device=device).to(dtype),
                    z=torch.randn(B, e, device=device).to(dtype), skip=torch.randn(e, device=device).to(dtype),
                    scale=m**-0.5, key_eps=1e-12)
        st = torch.randn(B, m, e, device=device)
        ref_st = st.clone()
        got = kernels.ddts_step(**args, state=st)
        want = reference.ddts_step(**args, state=ref_st)
        rows.append({"kernel": "ddts_step", "dtype": str(dtype), "rel_err": rel(got, want),
                     "state_rel_err": rel(st, ref_st)})
        H, D, S = 16, 128, 2048
        ring_k = torch.randn(B, S, 1, D, device=device).to(dtype)
        ring_v = torch.randn(B, S, H, D, device=device).to(dtype)
        valid = torch.rand(B, S, device=device) < 0.9
        refs = ring_k.clone(), ring_v.clone(), valid.clone()
        wargs = dict(q=torch.randn(B, H, D, device=device).to(dtype), k=torch.randn(B, 1, D, device=device).to(dtype),
                     v=torch.randn(B, H, D, device=device).to(dtype), inv_freq=rope_inv_freq(D, 10000.0, device=device),
                     positions=torch.randint(0, 100000, (B,), device=device),
                     slot=torch.tensor(1234, device=device), valid=torch.ones(B, dtype=torch.bool, device=device))
        got = kernels.window_step(**wargs, key_ring=ring_k, value_ring=ring_v, ring_valid=valid)
        want = reference.window_step(**wargs, key_ring=refs[0], value_ring=refs[1], ring_valid=refs[2])
        rows.append({"kernel": "window_step", "dtype": str(dtype), "rel_err": rel(got, want),
                     "ring_rel_err": rel(ring_k, refs[0]), "values_equal": bool(torch.equal(ring_v, refs[1]))})
        for row in rows[-3:]:
            row["tol"] = tol
            row["pass"] = row["rel_err"] < tol and all(v for k, v in row.items() if k.endswith("_equal")) and \
                all(v < tol for k, v in row.items() if k.endswith("state_rel_err") or k == "ring_rel_err")
    return rows


def check_graph_equals_eager(device) -> list[dict]:
    """Greedy tokens from CUDA-graph decode == the eager loop == the torch (unfused) step, per model kind."""
    rows = []
    for kind in ("rodimus", "rodimus_plus"):
        torch.manual_seed(0)
        model = build_model(kind, 4096, tiny=True, window_size=64).to(device).to(torch.bfloat16).eval()
        unfused = build_model(kind, 4096, tiny=True, window_size=64, decode_backend="torch").to(device)
        unfused.load_state_dict(model.state_dict())
        unfused = unfused.to(torch.bfloat16).eval()
        ids = torch.randint(0, 4096, (3, 100), device=device)
        mask = torch.ones_like(ids)
        mask[1, :37] = 0
        graph = model.generate(ids, attention_mask=mask, max_new_tokens=48, do_sample=False, decode="graph")
        eager = model.generate(ids, attention_mask=mask, max_new_tokens=48, do_sample=False, decode="eager")
        torch_step = unfused.generate(ids, attention_mask=mask, max_new_tokens=48, do_sample=False, decode="eager")
        rows.append({"model": kind, "graph_equals_eager": bool(torch.equal(graph, eager)),
                     "fused_equals_torch_step_tokens": float((eager[:, 100:] == torch_step[:, 100:]).float().mean())})
    return rows


# --- profile ----------------------------------------------------------------------------------------------------


def profile_step(model, ids, steps: int = 5) -> dict:
    """Where a decode step's time goes: kernel times of one eager step (torch.profiler) against the wall time of a
    captured step (CUDA events over graph replays); the difference is launch gaps inside the graph."""
    from torch.profiler import ProfilerActivity, profile

    from ..models.generation import SamplingPlan

    device = ids.device
    _generate(model, ids, 4)  # fills the batch-1 bucket and captures its graph
    graphs = model._decode_graphs()
    state = graphs.state(model, 1, model.dtype, device)
    plan = SamplingPlan(False, 1.0, 0, 1.0, (), 0, 0)
    eos = torch.zeros(0, dtype=torch.long, device=device)
    graphs.replay(model, state, plan, eos, True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        graphs.replay(model, state, plan, eos, True)
    end.record()
    sync(device)
    graph_ms = start.elapsed_time(end) / 20
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            graphs.replay(model, state, plan, eos, False)
        sync(device)
    rows = []
    for e in prof.key_averages():
        total = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        if total:
            rows.append({"kernel": e.key[:90], "launches_per_step": e.count / steps, "us_per_step": total / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"graph_step_ms": graph_ms, "kernel_us_per_step": sum(r["us_per_step"] for r in rows),
            "launches_per_step": sum(r["launches_per_step"] for r in rows), "top_kernels": rows[:30]}


# --- main ------------------------------------------------------------------------------------------------------


def llama_best_kwargs(model, max_cache_len: int):
    """HF's fastest decode: a static cache (one size for every call, so one compile) and its compiled step."""
    from transformers import StaticCache
    from transformers.generation.configuration_utils import CompileConfig

    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")

    def kwargs():
        cache.reset()
        return {"past_key_values": cache, "compile_config": compile_config}

    return kwargs


def run_decode_bench(cfg: DecodeBenchConfig, header: dict | None = None) -> dict:
    """Every section within cfg.budget_s; decode.json (+ png) rewritten after each; returns the report."""
    cfg = cfg.resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    header = header if header is not None else bench_env_header(cfg.device)
    out = Path(cfg.out)
    report = {"header": header, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                           for k, v in cfg.__dict__.items()}, "sections": {}}
    started = time.perf_counter()

    def left() -> float:
        return cfg.budget_s - (time.perf_counter() - started)

    def save(section: str, value) -> None:
        report["sections"][section] = value
        report["elapsed_s"] = time.perf_counter() - started
        write_report(report, out)
        logger.info("[%.0fs] %s: %s", report["elapsed_s"], section, json.dumps(value, default=str)[:600])

    def guarded(section: str, fn) -> None:
        """One failing section is recorded and the run goes on with the next."""
        try:
            save(section, fn())
        except Exception as err:  # noqa: BLE001 - a benchmark reports failures, it does not stop at the first
            import traceback

            save(section, {"error": f"{type(err).__name__}: {err}"[:500], "trace": traceback.format_exc()[-1500:]})

    if device.type == "cuda":
        save("copy_bytes_per_s", copy_bandwidth(device))
    if cfg.check and device.type == "cuda":
        guarded("check_kernels", lambda: check_kernels(device))
        guarded("check_graph", lambda: check_graph_equals_eager(device))

    max_pos = max(cfg.contexts + (cfg.capacity_context, cfg.batch_context)) + cfg.new_tokens + 8
    for kind in cfg.models:
        guarded(kind, lambda: bench_model(kind, cfg, device, max_pos, report, left, save))
        if hasattr(torch, "_dynamo"):
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def _attempt(fn) -> dict:
    """fn()'s result, or what went wrong (out of memory included): one failure must not cost the other rows."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {err}"[:400]}


def bench_model(kind: str, cfg: DecodeBenchConfig, device, max_pos: int, report: dict, left, save) -> dict:
    """Every measurement of one model; `save(kind, result)` after each, so partial results survive."""
    if left() < 20:
        return {"skipped": "time budget spent"}
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(kind, max_pos, tiny=cfg.tiny, **cfg.extra.get(kind, {}))
    model = model.to(torch.bfloat16).eval()
    result = {"params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        result["weight_floor_ms"] = weight_floor_ms(model, report["sections"]["copy_bytes_per_s"])
    vocab = model.config.vocab_size
    contexts = cfg.contexts if kind != "llama" else cfg.llama_contexts
    paths = ["default"] + (["best"] if kind == "llama" and cfg.llama_best and device.type == "cuda" else [])
    if kind != "llama":
        warm_ids = torch.randint(0, vocab, (1, min(contexts)), device=device)
        result["first_call_warmup_s"] = _timed(lambda: _generate(model, warm_ids, 8), device)
        if device.type == "cuda":
            # the same loop without CUDA graphs, for what the graphs are worth
            result["eager"] = {"context": min(contexts), **_attempt(lambda: decode_ms_per_token(
                model, warm_ids, 32, 2, lambda: {"decode": "eager"}))}
    for path in paths:
        rows = result.setdefault(path, [])
        for ctx in (contexts if path == "default" else [c for c in contexts if c in cfg.llama_best_contexts]):
            if left() < 30:
                rows.append({"context": ctx, "skipped": "time budget"})
                continue
            ids = torch.randint(0, vocab, (1, ctx), device=device)
            kwargs_fn = llama_best_kwargs(model, ctx + cfg.new_tokens + 8) if path == "best" else dict

            def measure():
                # the first call at a length compiles / captures: time it, keep it out of the medians
                row = {"warmup_s": _timed(lambda: _generate(model, ids, 4, **kwargs_fn()), device)}
                row.update(decode_ms_per_token(model, ids, cfg.new_tokens, cfg.repeats, kwargs_fn))
                if path == "default":
                    row.update(prefill_stats(model, ids))
                return row

            rows.append({"context": ctx, **_attempt(measure)})
            save(kind, result)
            del kwargs_fn
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if left() > 30 and cfg.batch > 1:
        batch_context = cfg.batch_context if not cfg.tiny else min(cfg.batch_context, max(contexts))
        ids = torch.randint(0, vocab, (cfg.batch, batch_context), device=device)
        def batched():
            # the first call at this shape compiles and captures: keep it out of the medians
            warm = _timed(lambda: _generate(model, ids, 4), device)
            return {"warmup_s": warm, **decode_ms_per_token(model, ids, cfg.new_tokens, min(cfg.repeats, 2))}

        result[f"batch{cfg.batch}"] = {"context": batch_context, **_attempt(batched)}
        save(kind, result)
    if left() > 30 and device.type == "cuda":
        result["capacity"] = _attempt(lambda: capacity(model, kind, cfg.capacity_context, cfg.new_tokens))
        save(kind, result)
    if cfg.profile and kind != "llama" and left() > 20:
        ids = torch.randint(0, vocab, (1, min(contexts)), device=device)
        result["profile"] = _attempt(lambda: profile_step(model, ids))
        save(kind, result)
    return result


def capacity(model, kind: str, context: int, new: int) -> dict:
    """The largest batch whose cache fits beside the weights at `context` tokens (from the bytes per sequence and
    the free memory, confirmed by allocating it) and, for slimkv, decode tokens/s at that batch."""
    device = next(model.parameters()).device
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info(device)[0]
    reserve = 6 * 2**30  # activations, logits and allocator slack of one decode step
    if kind == "llama":
        cfg = model.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        per_seq = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * (context + new) * 2
    else:
        per_seq = model.allocate_cache(1, device=torch.device("meta")).nbytes()
    rows = int((free - reserve) // per_seq)
    if kind != "llama":
        # a decode step of B rows also holds its activations and float32 logits (about 1 MB a row at V 126k)
        rows = int((free - reserve) // (per_seq + 4 * model.config.vocab_size * 3))
    out = {"context": context, "bytes_per_sequence": per_seq, "free_bytes": free, "max_batch": rows}
    if rows < 1:
        return out
    try:
        if kind == "llama":
            held = torch.empty(rows * per_seq, dtype=torch.uint8, device=device)  # the KV cache of `rows` sequences
            out["allocated"] = True
            del held
        else:
            from ..models.generation import SamplingPlan

            batch = rows if rows <= 256 else rows // 256 * 256
            batch = 1 << (batch.bit_length() - 1) if batch < 256 else batch  # a bucket size (models/generation.py)
            graphs = model._decode_graphs()
            state = graphs.state(model, batch, model.dtype, device)
            for entry in state.cache.layers:
                for name, t in entry.items():
                    t.fill_(True) if name == "ring_valid" else t.normal_()
            state.cache.seen.fill_(context)
            state.cache.next_position.fill_(context)
            state.finished.zero_()
            plan = SamplingPlan(False, 1.0, 0, 1.0, (), 0, 0)
            eos = torch.zeros(0, dtype=torch.long, device=device)
            graphs.prepare(model, state, plan, eos)
            graphs.replay(model, state, plan, eos, True)
            seconds = _timed(lambda: [graphs.replay(model, state, plan, eos, True) for _ in range(5)], device) / 5
            out.update(batch=batch, step_ms=seconds * 1e3, tokens_per_s=batch / seconds,
                       path="graph decode on a random full-size state")
            graphs.clear()
    except torch.OutOfMemoryError as err:
        out["error"] = f"out of memory at {rows} rows: {str(err)[:120]}"
    torch.cuda.empty_cache()
    return out


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decode.json", report)
    try:
        write_png(out / "decode.png", plot(report))
    except Exception as err:  # a plot must never lose the numbers
        logger.warning("decode.png not written: %s", err)


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = report["sections"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"rodimus": ("Rodimus-1.4B (slimkv)", "C0"), "rodimus_plus": ("Rodimus+-1.6B (slimkv)", "C1"),
              "llama": ("HF Llama 1.5B", "C2")}
    floors = []
    for kind, (label, color) in styles.items():
        result = sections.get(kind)
        if not isinstance(result, dict):
            continue
        for route, marker, suffix in (("default", "o-", ""), ("best", "s--", " static+compile")):
            rows = [r for r in result.get(route, []) if "ms_per_token" in r]
            if rows:
                name = label + (" generate()" if kind == "llama" and route == "default" else suffix)
                ax.plot([r["context"] for r in rows], [r["ms_per_token"] for r in rows], marker, color=color,
                        label=name)
        if "weight_floor_ms" in result:
            floors.append((result["weight_floor_ms"], color))
    for floor, color in floors:
        ax.axhline(floor, color=color, lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode ms / token (batch 1, lower is better)")
    header = report.get("header", {})
    ax.set_title(f"decode on {header.get('device_name', '?')} - dotted: weight-bandwidth floor", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, f"commit {str(header.get('git_commit'))[:12]}  torch {header.get('torch')}  "
             f"transformers {header.get('transformers')}", fontsize=7, color="gray")
    fig.tight_layout()
    return fig


def print_table(report: dict) -> str:
    lines = ["| model | path | context | ms/token | tokens/s | prefill s | warm-up s |", "|---|---|---|---|---|---|---|"]
    for kind in ("rodimus", "rodimus_plus", "llama"):
        result = report["sections"].get(kind)
        if not isinstance(result, dict):
            continue
        for path in ("default", "best"):
            for r in result.get(path, []):
                if "ms_per_token" in r:
                    lines.append(f"| {kind} | {path} | {r['context']} | {r['ms_per_token']:.2f} | "
                                 f"{r['tokens_per_s']:.0f} | {r.get('prefill_s', float('nan')):.3f} | "
                                 f"{r.get('warmup_s', float('nan')):.1f} |")
        for key in (k for k in result if k.startswith("batch")):
            r = result[key]
            if "ms_per_token" in r:
                lines.append(f"| {kind} | {key} | {r['context']} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:.0f} |"
                             " | |")
        cap = result.get("capacity", {})
        if "tokens_per_s" in cap:
            lines.append(f"| {kind} | max batch {cap['batch']} | {cap['context']} | {cap['step_ms']:.2f} | "
                         f"{cap['tokens_per_s']:.0f} | | |")
        if "weight_floor_ms" in result:
            lines.append(f"| {kind} | weight floor | | {result['weight_floor_ms']:.2f} | | | "
                         f"{result.get('first_call_warmup_s', float('nan')):.1f} |")
    return "\n".join(lines)


def bench_env_header(device: str) -> dict:
    """The shared machine header (slimkv/machine.py: the real commit, versions, device)."""
    return machine_header(device)
