"""GPU checks and timings of the gated-linear-attention backends (ours in Triton, chunked torch, fla as the peer).

legend: B batch, T time, H heads, K key dim, V value dim

The shapes (`Shape`) and inputs (`make_inputs`) here serve the CPU benchmark of the same op too (bench/ops.py).

`run(out_dir)` (`slimkv bench kernels`) (a) checks every Triton kernel against a float64 reference at realistic shapes in bf16 and float32
(relative error ||out - ref|| / ||ref||, fresh random inputs, outputs poisoned with NaN beforehand, gradients too),
(b) times forward and forward+backward (median of triton.testing.do_bench) for each backend, beside the floors
from bytes moved and FLOPs, (c) compares the models on the GPU with the CPU path (`model_parity`: logits,
gradients, greedy tokens), and (d) breaks the target shape down by kernel with the torch profiler. It writes
gla_gpu.json and gla_gpu.png. flash-linear-attention is optional: without it the peer columns are empty.
Needs CUDA; importing this module does not.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ranged, setting
from ..errors import UserError
from ..machine import package_version
from .harness import machine_header, nan_filled_empty, relative_error, run_folder, write_json, write_png

logger = logging.getLogger(__name__)

SCHEMA = "slimkv.bench.ops/1"
# where inputs live; a CPU smoke run under TRITON_INTERPRET=1 sets "cpu" (timings still need CUDA)
DEVICE = "cuda"


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    T: int
    H: int
    K: int
    V: int
    decay: str  # "channel" ([B, T, H, K]) or "head" ([B, T, H])
    # log-decays down to -20 per step: every sub-chunk takes the exact path of the chunked algorithm
    strong_decay: bool = False

    def label(self) -> str:
        return (f"{self.name} B{self.B} T{self.T} H{self.H} K{self.K} V{self.V}"
                + (" strong" if self.strong_decay else ""))


# Rodimus at d = 2048: one head, K = mem_size = 64, V = 2d = 4096; Mamba2-like: many small heads, per-head decay
TIMING_SHAPES = [
    Shape("rodimus", 8, 2048, 1, 64, 4096, "channel"),
    Shape("rodimus", 8, 8192, 1, 64, 4096, "channel"),
    Shape("rodimus", 8, 32768, 1, 64, 4096, "channel"),
    Shape("mamba2", 8, 2048, 32, 64, 64, "head"),
    Shape("mamba2", 8, 8192, 32, 64, 64, "head"),
    Shape("mamba2", 8, 2048, 64, 128, 64, "head"),
    Shape("gla-heads", 8, 2048, 16, 64, 128, "channel"),
]
TARGET = TIMING_SHAPES[0]

CHECK_SHAPES = [
    Shape("rodimus", 2, 2048, 1, 64, 4096, "channel"),
    Shape("mamba2", 2, 2048, 32, 64, 64, "head"),
    Shape("mamba2", 2, 1024, 16, 128, 64, "head"),
    Shape("gla-heads", 2, 1000, 4, 64, 128, "channel"),
]
# fp32 operands go through tf32 dots (Triton's default), bf16 operands are rounded to 8 bits of mantissa
BOUNDS = {torch.float32: 3e-3, torch.bfloat16: 1e-2}


def make_inputs(shape: Shape, dtype: torch.dtype, device=None, strong_decay=False, num_states=None, seed=None):
    """Random inputs shaped like a DDTS layer's: unit-norm-ish keys, log-decay -tau * softplus(.); fresh (seeded
    from the clock) unless `seed` is given. `strong_decay` (or the shape's own) draws log-decays in [-20, 0]."""
    strong_decay = strong_decay or shape.strong_decay
    device = device or DEVICE
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(time.time_ns() % (2**31)))
    B, T, H, K, V = shape.B, shape.T, shape.H, shape.K, shape.V

    def randn(*size):
        return torch.randn(*size, generator=gen, device=device)

    q = randn(B, T, H, K).to(dtype)
    k = (randn(B, T, H, K) / math.sqrt(K)).to(dtype)
    v = randn(B, T, H, V).to(dtype)
    gshape = (B, T, H, K) if shape.decay == "channel" else (B, T, H)
    if strong_decay:
        g = -20.0 * torch.rand(gshape, generator=gen, device=device)
    else:
        g = -torch.sigmoid(randn(*gshape)) * F.softplus(randn(*gshape) - 2.0)
    h0 = randn(num_states or B, H, K, V) * 0.1
    return q, k, v, g, h0


def _backend_fn(backend: str):
    if backend == "triton":
        from slimkv.ops.gla.triton import gla_triton

        return lambda q, k, v, g, h0, final, cu=None: gla_triton(q, k, v, g, None, h0, final, cu_seqlens=cu)
    if backend == "chunked":
        from slimkv.ops.gla.chunked import gla_chunked

        return lambda q, k, v, g, h0, final, cu=None: gla_chunked(q, k, v, g, None, h0, final)
    if backend == "reference":
        from slimkv.ops.gla.reference import gla_reference

        return lambda q, k, v, g, h0, final, cu=None: gla_reference(q, k, v, g, None, h0, final)
    if backend == "fla":
        from fla.ops.gla import chunk_gla

        def fla(q, k, v, g, h0, final, cu=None):
            # per-head decay through chunk_gla with the decay broadcast over K: fla 0.6.0's chunk_simple_gla
            # backward refuses Triton 3.4-3.7.0 on Hopper (its issue #640), and the math is the same
            if g.dim() == 3:
                g = g.unsqueeze(-1).expand(*g.shape, q.shape[-1])
            return chunk_gla(q, k, v, g, initial_state=h0, output_final_state=final, cu_seqlens=cu)

        return fla
    raise ValueError(f"unknown backend {backend!r}")


def fla_available() -> bool:
    try:
        _backend_fn("fla")
    except ImportError:
        return False
    return True


def _forward_backward(fn, inputs, out_w, state_w, cu=None):
    q, k, v, g, h0 = inputs
    o, ht = fn(q, k, v, g, h0, state_w is not None, cu)
    loss = (o.double() * out_w).sum()
    if state_w is not None:
        loss = loss + (ht.double() * state_w).sum()
    grads = torch.autograd.grad(loss, [x for x in inputs if x is not None])
    return [o, ht] + list(grads)


NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "dh0"]


def check_one(shape: Shape, dtype: torch.dtype, backend="triton", reference="chunked", strong_decay=False,
              cu_lengths=None) -> dict:
    """Relative errors of every output and gradient against `reference` run in float64 on the same inputs."""
    num_states = len(cu_lengths) if cu_lengths else None
    raw = make_inputs(shape, dtype, strong_decay=strong_decay, num_states=num_states)
    cu = None
    if cu_lengths:
        cu = torch.tensor([0] + list(cu_lengths), device=DEVICE).cumsum(0)
    out_w = torch.randn(shape.B, shape.T, shape.H, shape.V, device=DEVICE, dtype=torch.float64)
    state_w = torch.randn(num_states or shape.B, shape.H, shape.K, shape.V, device=DEVICE, dtype=torch.float64)
    ours_in = [x.detach().clone().requires_grad_(True) for x in raw]
    with nan_filled_empty():
        ours = _forward_backward(_backend_fn(backend), ours_in, out_w, state_w, cu)
    ref_in = [x.detach().double().requires_grad_(True) for x in raw]
    ref_fn = _backend_fn(reference)
    if cu is not None:
        ref_fn = _per_segment(ref_fn, cu)
    ref = _forward_backward(ref_fn, ref_in, out_w, state_w)
    errors = {n: relative_error(a, b) for n, a, b in zip(NAMES, ours, ref)}
    bound = BOUNDS[dtype]
    worst = max(errors.values()) if all(e == e for e in errors.values()) else float("nan")
    return {"shape": asdict(shape), "dtype": str(dtype).replace("torch.", ""), "backend": backend,
            "reference": f"{reference} float64", "strong_decay": strong_decay, "cu_lengths": cu_lengths,
            "errors": errors, "bound": bound, "passed": bool(worst <= bound)}


def _per_segment(fn, cu):
    bounds = cu.tolist()

    def run(q, k, v, g, h0, final, _cu=None):
        outs, states = [], []
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            o, s = fn(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], h0[i : i + 1], True)
            outs.append(o)
            states.append(s)
        return torch.cat(outs, 1), torch.cat(states, 0)

    return run


def check_step(shape: Shape, dtype: torch.dtype) -> dict:
    from slimkv.ops.gla.triton import gla_step_triton

    q, k, v, g, h0 = make_inputs(shape, dtype)
    args = (q[:, 0], k[:, 0], v[:, 0], g[:, 0])
    with nan_filled_empty():
        o, s = gla_step_triton(*args, h0)
    qd, kd, vd, gd = (x.double() for x in args)
    decay = gd.exp() if gd.dim() == 3 else gd.exp().unsqueeze(-1)
    s_ref = h0.double() * decay.unsqueeze(-1) + kd.unsqueeze(-1) * vd.unsqueeze(-2)
    o_ref = torch.einsum("bhk,bhkv->bhv", qd, s_ref) * shape.K**-0.5
    errors = {"o": relative_error(o, o_ref), "state": relative_error(s, s_ref)}
    bound = BOUNDS[dtype]
    return {"shape": asdict(shape), "dtype": str(dtype).replace("torch.", ""), "backend": "triton_step",
            "reference": "formula float64", "errors": errors, "bound": bound,
            "passed": all(e <= bound for e in errors.values())}


def _log_check(r: dict, log) -> None:
    worst = max(r["errors"], key=lambda n: r["errors"][n])
    log(f"check {r['backend']:12s} {r['dtype']:9s} {Shape(**r['shape']).label():42s} "
        f"worst {worst}={r['errors'][worst]:.2e} bound {r['bound']:.0e} {'ok' if r['passed'] else 'FAIL'}")


def run_checks(log=logger.info, deadline: float = float("inf")) -> list[dict]:
    """Every kernel in both dtypes; logs each result as it lands and stops starting new ones after `deadline`."""
    lengths = [1, 63, 64, 65, 700, 2000, 1203]
    jobs = []
    for dtype in (torch.bfloat16, torch.float32):
        jobs += [
            lambda d=dtype: check_one(CHECK_SHAPES[0], d),
            lambda d=dtype: check_one(Shape("rodimus-strong", 2, 1024, 1, 64, 512, "channel"), d, strong_decay=True),
            lambda d=dtype: check_one(Shape("mamba2-strong", 2, 1024, 8, 64, 64, "head"), d, strong_decay=True),
            lambda d=dtype: check_one(CHECK_SHAPES[1], d),
            lambda d=dtype: check_one(Shape("varlen", 1, sum(lengths), 2, 64, 256, "channel"), d, cu_lengths=lengths),
            lambda d=dtype: check_step(Shape("rodimus-step", 8, 1, 1, 64, 4096, "channel"), d),
            lambda d=dtype: check_step(Shape("mamba2-step", 8, 1, 32, 64, 64, "head"), d),
        ]
    jobs += [
        lambda: check_one(Shape("varlen", 1, sum(lengths), 8, 64, 64, "head"), torch.bfloat16, cu_lengths=lengths),
        lambda: check_one(CHECK_SHAPES[2], torch.bfloat16),
        lambda: check_one(CHECK_SHAPES[3], torch.bfloat16),
        # the loop spec itself once at a realistic width (slow: one step per token)
        lambda: check_one(Shape("rodimus", 1, 256, 1, 64, 4096, "channel"), torch.bfloat16, reference="reference"),
    ]
    results = []
    for job in jobs:
        if time.time() > deadline:
            log(f"checks: deadline reached, {len(jobs) - len(results)} checks not run")
            break
        results.append(job())
        _log_check(results[-1], log)
    return results


def model_parity(device: str = "cuda", log=logger.info) -> list[dict]:
    """The models on `device` (Triton GLA, FlexAttention) against the same weights on the CPU path (chunked torch):
    fp32 logits and every gradient, bf16-autocast logits, and cached greedy decoding token for token."""
    from ..models import RodimusConfig, RodimusForCausalLM

    rows = []
    for block in ("rodimus", "rodimus_plus"):
        torch.manual_seed(0)
        cfg = RodimusConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, block_type=block, num_heads=2,
                            window_size=128, max_position_embeddings=4096)
        cpu = RodimusForCausalLM(cfg).float()
        gpu = RodimusForCausalLM(cfg).to(device)
        gpu.load_state_dict(cpu.state_dict())
        ids = torch.randint(0, 1000, (2, 300))
        out_c = cpu(ids, labels=ids)
        out_c.loss.backward()
        out_g = gpu(ids.to(device), labels=ids.to(device))
        out_g.loss.backward()
        cpu_grads = {n: p.grad for n, p in cpu.named_parameters()}
        row = {"block_type": block, "logits_fp32": relative_error(out_g.logits.cpu(), out_c.logits),
               "worst_grad": max(relative_error(p.grad.cpu(), cpu_grads[n]) for n, p in gpu.named_parameters())}
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            row["logits_bf16_autocast"] = relative_error(gpu(ids.to(device)).logits.float().cpu(), out_c.logits)
        gpu.eval()
        cpu.eval()
        with torch.no_grad():
            a = gpu.generate(ids[:, :20].to(device), max_new_tokens=30, do_sample=False).cpu()
            b = cpu.generate(ids[:, :20], max_new_tokens=30, do_sample=False)
        row["greedy_tokens_differ"] = int((a != b).sum())
        log(f"{block}: fp32 logits {row['logits_fp32']:.2e}, worst grad {row['worst_grad']:.2e}, bf16 logits "
            f"{row['logits_bf16_autocast']:.2e}, greedy tokens differing {row['greedy_tokens_differ']}")
        rows.append(row)
    return rows


def device_ceilings() -> dict:
    """Measured copy bandwidth (bytes read + written per second) and bf16 matrix rate."""
    from triton.testing import do_bench

    n = 1 << 30
    src = torch.randn(n // 4, device=DEVICE)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    bandwidth = 2 * n / (ms * 1e-3)
    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    del src, dst, a, b
    return {"copy_bytes_per_s": bandwidth, "bf16_flop_per_s": 2 * 8192**3 / (ms * 1e-3)}


def floors(shape: Shape, dtype: torch.dtype, mode: str, ceilings: dict) -> dict:
    """Fewest bytes (each input read once, each output written once) and the FLOPs of the recurrence."""
    B, T, H, K, V = shape.B, shape.T, shape.H, shape.K, shape.V
    e = torch.tensor([], dtype=dtype).element_size()
    g_elems = B * T * H * (K if shape.decay == "channel" else 1)
    qkv = (2 * B * T * H * K + B * T * H * V) * e + g_elems * 4
    out = B * T * H * V * e
    bytes_fwd = qkv + out
    # S update and the query contraction: 2 K V FLOPs each per token and head
    flops_fwd = 4 * B * T * H * K * V
    if mode == "fwd":
        nbytes, flops = bytes_fwd, flops_fwd
    else:
        # backward reads q, k, v, g, do and writes dq, dk, dv, dg; three more K x V contractions per token
        nbytes = bytes_fwd + (qkv + out) + qkv
        flops = flops_fwd + 2 * flops_fwd
    ms_bytes = nbytes / ceilings["copy_bytes_per_s"] * 1e3
    ms_flops = flops / ceilings["bf16_flop_per_s"] * 1e3
    return {"bytes": nbytes, "flops": flops, "floor_ms_bytes": ms_bytes, "floor_ms_flops": ms_flops,
            "floor_ms": max(ms_bytes, ms_flops)}


def gla_design_bytes(B: int, T: int, H: int, K: int, V: int, elem: int, mode: str, head_decay: bool = False) -> dict:
    """Bytes the ops/gla/triton kernels read and write (each tensor counted once per kernel; re-reads of the same
    chunk by other V-tile programs are assumed to hit L2), per stage, with C = 64."""
    N, NC = B * T, B * math.ceil(T / 64)
    g = N * H * (1 if head_decay else K) * 4
    qk, vv = N * H * K * elem, N * H * V * elem
    A, h = NC * H * 64 * 64 * 4, NC * H * K * V * elem
    stages = {
        "prep": 2 * qk + g + g + 2 * qk,
        "intra": 2 * qk + g + A,
        "state_fwd": 2 * qk + A + vv + vv + h,
    }
    if mode == "fwd_bwd":
        stages["state_grad"] = 2 * qk + A + vv + vv + h
        stages["qk_grad"] = 2 * qk + vv + qk + g + h + h + vv + (2 * qk if head_decay else 2 * N * H * K * 4 + A)
        if not head_decay:
            stages["intra_grad"] = 2 * qk + g + A + 2 * N * H * K * 4 + 2 * qk + g
    return {"stages": stages, "total": sum(stages.values())}


def time_one(shape: Shape, dtype: torch.dtype, backend: str, mode: str) -> float:
    """Median milliseconds of one forward (no grad) or one forward+backward, on fresh random inputs."""
    from triton.testing import do_bench

    fn = _backend_fn(backend)
    q, k, v, g, _ = make_inputs(shape, dtype, seed=0)
    if mode == "fwd":
        with torch.no_grad():
            # first call outside the timing: compilation and the peer's autotuning
            fn(q, k, v, g, None, False)
            torch.cuda.synchronize()
            return do_bench(lambda: fn(q, k, v, g, None, False), warmup=25, rep=100, return_mode="median")
    inputs = [x.requires_grad_(True) for x in (q, k, v, g)]
    do = torch.randn(shape.B, shape.T, shape.H, shape.V, device=DEVICE, dtype=dtype)

    def step():
        o, _ = fn(*inputs, None, False)
        torch.autograd.grad(o, inputs, do)

    step()
    torch.cuda.synchronize()
    return do_bench(step, warmup=25, rep=100, return_mode="median")


def run_timings(ceilings: dict, shapes=TIMING_SHAPES, backends=("triton", "fla", "chunked"), log=logger.info,
                deadline: float = float("inf"), rows: list | None = None, on_row=None) -> list[dict]:
    """Appends to `rows` (and calls on_row after each) so a run cut short keeps what it measured. The peer's first
    call at a new shape includes its autotuning (86 s for fla's forward at the target on an H100): budget for it."""
    rows = [] if rows is None else rows
    for shape in shapes:
        if time.time() > deadline:
            log(f"timings: deadline reached before {shape.label()}")
            break
        for mode in ("fwd", "fwd_bwd"):
            fl = floors(shape, torch.bfloat16, mode, ceilings)
            for backend in backends:
                if backend == "fla" and not fla_available():
                    continue
                # the chunked torch path keeps T x C x K intermediates per chunk: skip where it cannot fit
                if backend == "chunked" and shape.B * shape.T * shape.H * shape.V > 8 * 8192 * 4096:
                    continue
                row = {"op": "gla", "shape": asdict(shape), "dtype": "bfloat16", "mode": mode, "backend": backend}
                try:
                    ms = time_one(shape, torch.bfloat16, backend, mode)
                    row.update(ms=ms, **fl, achieved_bytes_per_s=fl["bytes"] / (ms * 1e-3),
                               times_floor=ms / fl["floor_ms"])
                    if backend == "triton":
                        design = gla_design_bytes(shape.B, shape.T, shape.H, shape.K, shape.V, 2, mode,
                                                  head_decay=shape.decay == "head")
                        row.update(design_bytes=design["total"], design_stages=design["stages"],
                                   design_over_floor=design["total"] / fl["bytes"])
                except torch.OutOfMemoryError:
                    row.update(ms=None, error="out of memory", **fl)
                except Exception as exc:  # the peer may refuse a shape or a toolchain; record it and go on
                    row.update(ms=None, error=f"{type(exc).__name__}: {str(exc)[:160]}", **fl)
                torch.cuda.empty_cache()
                rows.append(row)
                if on_row is not None:
                    on_row()
                log(f"time {backend:8s} {mode:8s} {shape.label():42s} "
                    + (f"{row['ms']:9.3f} ms  floor {fl['floor_ms']:.3f} ms" if row.get("ms") else row["error"]))
    return rows


def stage_profile(shape: Shape, backend: str, iters: int = 5) -> dict:
    """Device time per kernel (ms per forward+backward), from the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn = _backend_fn(backend)
    q, k, v, g, _ = make_inputs(shape, torch.bfloat16, seed=0)
    inputs = [x.requires_grad_(True) for x in (q, k, v, g)]
    do = torch.randn_like(v)

    def step():
        o, _ = fn(*inputs, None, False)
        torch.autograd.grad(o, inputs, do)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    stages = {}
    for ev in prof.key_averages():
        device_us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if device_us > 0:
            stages[ev.key[:80]] = device_us / iters / 1e3
    return dict(sorted(stages.items(), key=lambda kv: -kv[1]))


def tune(shape: Shape = TARGET, log=logger.info) -> list[dict]:
    """Sweep launch parameters of each stage at `shape`; keep the fastest in TUNING. Returns every trial."""
    from triton.testing import do_bench

    from slimkv.ops.gla.triton import TUNING
    from slimkv.ops.gla.triton import autograd as tri

    q, k, v, g, _ = make_inputs(shape, torch.bfloat16, seed=0)
    B, T, H, K, V = shape.B, shape.T, shape.H, shape.K, shape.V
    flat = [x.reshape(B * T, H, -1).contiguous() for x in (q, k, v)]
    gf = g.reshape(B * T, H, -1).contiguous() if g.dim() == 4 else g.reshape(B * T, H).contiguous()
    tables = tri.chunk_tables(B, T, None, q.device)
    scale = K**-0.5
    do = torch.randn_like(flat[2])
    trials = []

    def fwd():
        return tri._forward(*flat, gf, scale, None, tables, False, True)

    def bwd(saved):
        return tri._backward(*flat, gf, scale, saved, tables, do, None, False)

    sweeps = {
        "fwd": [(64, 8, 2), (32, 4, 2), (32, 4, 3), (64, 4, 1), (64, 8, 3), (128, 8, 1)],
        "dh": [(64, 8, 2), (32, 4, 2), (32, 4, 3), (64, 4, 1), (64, 8, 3), (128, 8, 1)],
        "dqk": [(64, 8, 2), (32, 4, 3), (64, 8, 3), (128, 8, 2)],
    }
    for stage, configs in sweeps.items():
        best = None
        for bv, warps, stages in configs:
            setattr(TUNING, f"bv_{stage}", bv)
            setattr(TUNING, f"warps_{stage}", warps)
            setattr(TUNING, f"stages_{stage}", stages)
            try:
                if stage == "fwd":
                    ms = do_bench(fwd, warmup=10, rep=50, return_mode="median")
                else:
                    saved = fwd()[2]
                    ms = do_bench(lambda: bwd(saved), warmup=10, rep=50, return_mode="median")
            except Exception as exc:  # a config the compiler rejects (shared memory, registers) is just skipped
                trials.append({"stage": stage, "bv": bv, "warps": warps, "stages": stages, "error": str(exc)[:200]})
                continue
            trials.append({"stage": stage, "bv": bv, "warps": warps, "stages": stages, "ms": ms})
            log(f"tune {stage:4s} bv={bv:3d} warps={warps} stages={stages}: {ms:.3f} ms")
            if best is None or ms < best[0]:
                best = (ms, bv, warps, stages)
        _, bv, warps, stages = best
        setattr(TUNING, f"bv_{stage}", bv)
        setattr(TUNING, f"warps_{stage}", warps)
        setattr(TUNING, f"stages_{stage}", stages)
        log(f"tune {stage}: best bv={bv} warps={warps} stages={stages} ({best[0]:.3f} ms)")
    return trials


def _meta() -> dict:
    """The older "meta" block of gla_gpu.json (docs/kernels.md reads it), from the shared machine header."""
    header = machine_header("cuda")
    meta = {"device": header["device_name"], "sms": header.get("sms"), "torch": header["torch"],
            "triton": header["triton"], "python": header["python"], "commit": header["git_commit"],
            "date": header["date"], "fla": package_version("fla-core") or package_version("flash-linear-attention")}
    return meta


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["timings"] if r.get("ms")]
    shapes = []
    for r in rows:
        label = Shape(**r["shape"]).label().replace(" B", "\nB", 1)
        if label not in shapes:
            shapes.append(label)
    backends = [b for b in ("triton", "chunked", "fla") if any(r["backend"] == b for r in rows)]
    colors = {"triton": "tab:blue", "chunked": "tab:gray", "fla": "tab:orange"}
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(shapes)), 9))
    for ax, mode in zip(axes, ("fwd", "fwd_bwd")):
        width = 0.8 / (len(backends) + 1)
        for bi, backend in enumerate(backends):
            xs, ys = [], []
            for si, label in enumerate(shapes):
                for r in rows:
                    if (r["mode"] == mode and r["backend"] == backend
                            and Shape(**r["shape"]).label().replace(" B", "\nB", 1) == label):
                        xs.append(si + bi * width)
                        ys.append(r["ms"])
            ax.bar(xs, ys, width, label=backend, color=colors[backend])
        floor_x, floor_y = [], []
        for si, label in enumerate(shapes):
            for r in rows:
                if r["mode"] == mode and Shape(**r["shape"]).label().replace(" B", "\nB", 1) == label:
                    floor_x.append(si + len(backends) * width)
                    floor_y.append(r["floor_ms"])
                    break
        ax.bar(floor_x, floor_y, width, label="floor (bytes or FLOPs)", color="tab:green")
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes, fontsize=7)
        ax.set_ylabel("ms (median)")
        ax.set_title(f"gated linear attention, bf16, {mode.replace('_', '+')} -- {report['meta']['device']}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def run(out_dir: str | os.PathLike, checks=True, timings=True, tuning=False, profile=True,
        shapes=TIMING_SHAPES, log=logger.info, budget_s: float = 480.0) -> dict:
    """Everything above in one go; writes gla_gpu.json (after every section) and gla_gpu.png."""
    if not torch.cuda.is_available():
        raise UserError("slimkv bench kernels needs a CUDA GPU")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "gla_gpu.json"
    start = time.time()
    report = {"schema": SCHEMA, "header": machine_header("cuda"), "meta": _meta()}
    log(f"device: {report['meta']['device']}  torch {torch.__version__}  fla {report['meta']['fla']}")
    report["ceilings"] = device_ceilings()
    log(f"ceilings: copy {report['ceilings']['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"bf16 {report['ceilings']['bf16_flop_per_s'] / 1e12:.0f} TFLOP/s")
    if checks:
        report["checks"] = run_checks(log, deadline=start + 0.35 * budget_s)
        write_json(json_path, report)
    if tuning:
        report["tuning"] = tune(TARGET, log)
        write_json(json_path, report)
    from slimkv.ops.gla.triton import TUNING

    report["tuning_used"] = asdict(TUNING)
    if timings:
        report["timings"] = []
        run_timings(report["ceilings"], shapes, log=log, deadline=start + 0.8 * budget_s, rows=report["timings"],
                    on_row=lambda: write_json(json_path, report))
        write_json(json_path, report)
        write_png(out / "gla_gpu.png", plot(report))
    if checks and time.time() < start + 0.85 * budget_s:
        report["model_parity"] = model_parity(log=log)
        write_json(json_path, report)
    if profile and time.time() < start + 0.9 * budget_s:
        report["stages"] = {"triton": stage_profile(TARGET, "triton")}
        if fla_available():
            report["stages"]["fla"] = stage_profile(TARGET, "fla")
        for backend, stages in report["stages"].items():
            log(f"stages {backend} at {TARGET.label()} (ms per fwd+bwd):")
            for name, ms in list(stages.items())[:14]:
                log(f"   {ms:8.3f}  {name}")
    write_json(json_path, report)
    return report


@dataclass
class KernelsBenchConfig:
    """`slimkv bench kernels` (GPU): which sections of `run` to do, and where the files go."""

    # the run folder for gla_gpu.json and gla_gpu.png ("" = runs/bench/kernels)
    out: str = setting("", metavar="DIR")
    # seconds before later sections are cut short
    budget: float = ranged(480.0, gt=0)
    # check every kernel against the float64 reference
    checks: bool = True
    # time every backend at the timing shapes
    timings: bool = True
    # sweep launch parameters at the target shape first
    tune: bool = False
    # break the target shape down by kernel with the torch profiler
    profile: bool = True
    # time only the target shape B8 T2048 K64 V4096
    target_only: bool = False


def run_kernels_bench(config: KernelsBenchConfig, log=logger.info) -> dict:
    """`run` with the config's sections into its run folder; returns the report."""
    shapes = [TARGET] if config.target_only else TIMING_SHAPES
    return run(run_folder("kernels", config.out or None), checks=config.checks, timings=config.timings,
               tuning=config.tune, profile=config.profile, shapes=shapes, log=log, budget_s=config.budget)


def format_summary(report: dict) -> str:
    """The timings as a markdown table (ms of each backend beside the floor) and the checks that failed."""
    rows = report.get("timings", [])
    lines = ["| shape | mode | triton ms | chunked ms | fla ms | floor ms | fla / triton |", "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((Shape(**r["shape"]).label(), r["mode"]) for r in rows))
    for label, mode in keys:
        by = {r["backend"]: r for r in rows if Shape(**r["shape"]).label() == label and r["mode"] == mode}
        ms = {b: (by[b].get("ms") if b in by else None) for b in ("triton", "chunked", "fla")}
        floor = next(iter(by.values()))["floor_ms"]
        ratio = f"{ms['fla'] / ms['triton']:.2f}" if ms["fla"] and ms["triton"] else "-"
        cells = [f"{ms[b]:.3f}" if ms[b] else "-" for b in ("triton", "chunked", "fla")]
        lines.append(f"| {label} | {mode} | " + " | ".join(cells) + f" | {floor:.3f} | {ratio} |")
    checks = report.get("checks", [])
    if checks:
        failed = [c for c in checks if not c["passed"]]
        lines.append(f"\nchecks: {len(checks) - len(failed)}/{len(checks)} passed")
        lines += [f"FAILED: {c['backend']} {c['dtype']} {Shape(**c['shape']).label()} {c['errors']}" for c in failed]
    return "\n".join(lines)
