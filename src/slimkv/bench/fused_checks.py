"""Checks and timings of the fused training ops on the device (`slimkv bench train --check`, and before a full run).

legend: N rows (tokens), d model width, e DDTS inner width, m memory size, f FFN width, V vocabulary

`run_checks(scale)` runs every fused Triton kernel against its torch spec evaluated in float64 on the same fresh
random inputs (seeded from the clock), with every output buffer poisoned with NaN first (torch.empty returns NaNs, so
an element a kernel never writes shows up), outputs and all gradients, relative errors ||out - ref|| / ||ref||.
Bounds: 1e-5 for float32 inputs, 1e-2 for bf16. It also captures each op's forward (the decode path) in a CUDA graph,
replays it on new inputs and requires the replay to equal an eager call bit for bit. `scale="model"` uses the shapes
of the Rodimus-1.4B / Rodimus+-1.6B layers; `scale="tiny"` is for the CPU under TRITON_INTERPRET=1 (tests).
`run_op_timings()` times each op's triton path against the torch spec at the model shapes, forward and
forward+backward, beside the fewest bytes the op must move (each input read once, each output written once).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable

import torch

from .harness import nan_filled_empty, relative_error

logger = logging.getLogger(__name__)

BOUNDS = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# (rows N, d, e, m, f, V) per scale
SHAPES = {
    "model": dict(N=4096, d=2048, e=4096, m=64, f=2736, V=126464, T=2048),
    "tiny": dict(N=40, d=48, e=96, m=16, f=40, V=300, T=20),
}


def _gen(device):
    gen = torch.Generator(device=device)
    gen.manual_seed(time.time_ns() % (2**31))
    return gen


def _compare(name: str, dtype: torch.dtype, shape: str, fn: Callable, inputs: list[torch.Tensor | None],
             bound: float | None = None) -> dict:
    """Run fn on the triton backend and on the torch spec in float64; compare every output and input gradient."""
    def run(backend, cast):
        xs = [None if t is None else cast(t).detach().requires_grad_(t.is_floating_point()) for t in inputs]
        outs = fn(*xs, backend=backend)
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o is not None]
        return xs, outs

    with nan_filled_empty():
        xs, outs = run("triton", lambda t: t)
        weights = [torch.randn(o.shape, dtype=torch.float64, device=o.device) for o in outs]
        loss = sum((o.double() * w).sum() for o, w in zip(outs, weights))
        leaves = [x for x in xs if x is not None and x.requires_grad]
        grads = torch.autograd.grad(loss, leaves)
    xs_ref, outs_ref = run("torch", lambda t: t.double() if t.is_floating_point() else t)
    loss_ref = sum((o * w).sum() for o, w in zip(outs_ref, weights))
    grads_ref = torch.autograd.grad(loss_ref, [x for x in xs_ref if x is not None and x.requires_grad])
    errors = {f"out{i}": relative_error(a, b) for i, (a, b) in enumerate(zip(outs, outs_ref))}
    errors.update({f"grad{i}": relative_error(a, b) for i, (a, b) in enumerate(zip(grads, grads_ref))})
    bound = bound if bound is not None else BOUNDS[dtype]
    worst = max(errors.values())
    return {"op": name, "dtype": str(dtype).replace("torch.", ""), "shape": shape, "errors": errors, "bound": bound,
            "passed": bool(worst == worst and worst <= bound)}


def _norm_checks(s, device, dtype, gen):
    from slimkv.ops.norm import add_rms_norm, gated_rms_norm, rms_norm

    N, d, e = s["N"], s["d"], s["e"]
    w_d = 1 + 0.1 * torch.randn(d, device=device, generator=gen)
    w_e = 1 + 0.1 * torch.randn(e, device=device, generator=gen)
    x = torch.randn(N, d, device=device, generator=gen).to(dtype)
    res = torch.randn(N, d, device=device, generator=gen)
    o = torch.randn(N, e, device=device, generator=gen).to(dtype)
    # z as the mixer has it: the second half of the fused [x | z] projection, rows 2e apart
    z = torch.randn(N, 2 * e, device=device, generator=gen).to(dtype)[:, e:]
    return [
        _compare("rms_norm", dtype, f"[{N}, {d}]", lambda x, w, backend: rms_norm(x, w, 1e-5, backend=backend),
                 [x, w_d]),
        _compare("add_rms_norm", dtype, f"[{N}, {d}] + fp32 residual",
                 lambda x, r, w, backend: add_rms_norm(x, r, w, 1e-5, backend=backend), [x, res, w_d]),
        _compare("gated_rms_norm", dtype, f"[{N}, {e}], strided gate",
                 lambda x, z, w, backend: gated_rms_norm(x, z, w, 1e-5, backend=backend), [o, z, w_e]),
        _compare("gated_rms_norm + skip", dtype, f"[{N}, {e}], o + D x~",
                 lambda x, z, xs, D, w, backend: gated_rms_norm(x, z, w, 1e-5, skip=xs, skip_scale=D, backend=backend),
                 [o, z, torch.randn(N, e, device=device, generator=gen).to(dtype),
                  torch.randn(e, device=device, generator=gen), w_e]),
    ]


def _gate_checks(s, device, dtype, gen):
    from slimkv.ops.ddts_gates import ddts_gates

    N, m = s["N"], s["m"]
    gt = 2 * torch.randn(N, 2 * m, device=device, generator=gen)
    k = torch.randn(N, 2 * m, device=device, generator=gen).to(dtype)[:, m:]
    # dk's projection can cancel most of it when keys are few; m >= 16 here, so the plain bound holds
    return [_compare("ddts_gates", dtype, f"[{N}, 2x{m}], strided k",
                     lambda gt, k, backend: ddts_gates(gt, k, 1e-12, backend=backend), [gt, k])]


def _conv_checks(s, device, dtype, gen):
    from slimkv.ops.conv import causal_conv1d_silu

    e, T = s["e"], s["T"]
    B = max(1, s["N"] // T)
    weight = 0.5 * torch.randn(e, 4, device=device, generator=gen)
    bias = torch.randn(e, device=device, generator=gen)
    out = []
    for label, steps in (("sequence", T), ("decode step", 1), ("2 steps < state", 2)):
        x = torch.randn(B, steps, 2 * e, device=device, generator=gen).to(dtype)[..., :e]
        state = torch.randn(B, e, 3, device=device, generator=gen).to(dtype)

        def fn(x, w, b, st, backend):
            return causal_conv1d_silu(x, w, b, st, output_final_state=True, backend=backend)

        out.append(_compare("causal_conv1d_silu", dtype, f"[{B}, {steps}, {e}] K4 + state ({label})", fn,
                            [x, weight, bias, state]))
    return out


def _swiglu_checks(s, device, dtype, gen):
    from slimkv.ops.swiglu import swiglu

    u = torch.randn(s["N"], 2 * s["f"], device=device, generator=gen).to(dtype)
    return [_compare("swiglu", dtype, f"[{s['N']}, 2x{s['f']}]", lambda u, backend: swiglu(u, backend=backend), [u])]


def _ce_checks(s, device, gen):
    """float32 (no autocast) against the float64 spec; bf16 autocast against the spec under the same autocast."""
    from slimkv.ops.cross_entropy import linear_cross_entropy

    N, d, V = s["N"] // 2, s["d"], s["V"]
    # several chunks and a partial last one (the default chunking would take this vocabulary in one piece at N)
    chunk = 16384 if V > 16384 else 128
    h = torch.randn(N, d, device=device, generator=gen)
    weight = torch.randn(V, d, device=device, generator=gen) / math.sqrt(d)
    labels = torch.randint(0, V, (N,), device=device, generator=gen)
    labels[::7] = -100
    out = [_compare("linear_cross_entropy", torch.float32, f"N {N} d {d} V {V} chunk {chunk}",
                    lambda h, w, backend: linear_cross_entropy(h, w, labels, chunk_size=chunk, backend=backend),
                    [h, weight])]
    results = {}
    for backend in ("triton", "torch"):
        hh, ww = h.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with nan_filled_empty() if backend == "triton" else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = linear_cross_entropy(hh, ww, labels, chunk_size=chunk, backend=backend)
            results[backend] = [loss, *torch.autograd.grad(loss, (hh, ww))]
    errors = {n: relative_error(a, b) for n, a, b in zip(("loss", "dh", "dweight"), results["triton"], results["torch"])}
    worst = max(errors.values())
    out.append({"op": "linear_cross_entropy", "dtype": "bf16 autocast", "shape": f"N {N} d {d} V {V} chunk {chunk}",
                "reference": "torch backend, same autocast", "errors": errors, "bound": 1e-2,
                "passed": bool(worst == worst and worst <= 1e-2)})
    return out


def _graph_checks(s, device, gen) -> list[dict]:
    """Each op's forward captured in a CUDA graph (the decode path: no host syncs), replayed on new inputs."""
    from slimkv.ops.conv import causal_conv1d_silu
    from slimkv.ops.ddts_gates import ddts_gates
    from slimkv.ops.norm import add_rms_norm, gated_rms_norm, rms_norm
    from slimkv.ops.swiglu import swiglu

    B, d, e, m, f = 8, s["d"], s["e"], s["m"], s["f"]
    bf = torch.bfloat16

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    w_d, w_e, w_conv = rand(d), rand(e), rand(e, 4)
    cases = {
        "rms_norm": (lambda x: rms_norm(x, w_d, out_dtype=bf), [rand(B, d)]),
        "add_rms_norm": (lambda x, r: add_rms_norm(x, r, w_d, out_dtype=bf), [rand(B, d, dtype=bf), rand(B, d)]),
        "gated_rms_norm": (lambda x, z: gated_rms_norm(x, z, w_e, out_dtype=bf), [rand(B, e), rand(B, e, dtype=bf)]),
        "gated_rms_norm + skip": (lambda x, z, xs: gated_rms_norm(x, z, w_e, out_dtype=bf, skip=xs, skip_scale=w_e),
                                  [rand(B, e, dtype=bf), rand(B, e, dtype=bf), rand(B, e, dtype=bf)]),
        "ddts_gates": (lambda gt, k: ddts_gates(gt, k, out_dtype=bf), [rand(B, 2 * m), rand(B, m, dtype=bf)]),
        "causal_conv1d_silu": (lambda x, st: causal_conv1d_silu(x, w_conv, w_e, st, output_final_state=True),
                               [rand(B, 1, e, dtype=bf), rand(B, e, 3, dtype=bf)]),
        "swiglu": (lambda u: swiglu(u), [rand(B, 2 * f, dtype=bf)]),
    }
    out = []
    for name, (fn, static_in) in cases.items():
        try:
            with torch.no_grad():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn(*static_in)  # compile outside the capture
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = fn(*static_in)
                fresh = [torch.randn_like(t.float()).to(t.dtype) for t in static_in]
                for buf, new in zip(static_in, fresh):
                    buf.copy_(new)
                graph.replay()
                eager = fn(*fresh)
            static_out = static_out if isinstance(static_out, tuple) else (static_out,)
            eager = eager if isinstance(eager, tuple) else (eager,)
            same = all(torch.equal(a, b) for a, b in zip(static_out, eager))
            out.append({"op": name, "dtype": "mixed", "shape": f"decode rows B {B}", "check": "cuda graph replay",
                        "errors": {"replay != eager": 0.0 if same else 1.0}, "bound": 0.0, "passed": same})
        except Exception as exc:  # a capture failure is exactly what this check reports
            out.append({"op": name, "check": "cuda graph replay", "passed": False,
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return out


def _mamba2_checks(s, device, gen) -> list[dict]:
    """The Mamba2 mixer's fused glue (layers/mamba2.py: stacked x/B/C projection, conv + SiLU kernel, per-head norm
    through ops/norm, norm weight folded into out_proj) against its torch glue in float64. Both sides run the
    chunked torch GLA, so the check isolates the glue (the GLA kernel has its own checks, _gla_checks)."""
    from slimkv.layers.mamba2 import Mamba2Mixer

    d, T = s["d"], s["T"]
    P = 64 if d >= 512 else 8
    B = max(1, s["N"] // T)
    out = []
    for gate in (True, False):
        fast = Mamba2Mixer(d, d // P, P, state_size=s["m"], use_gate=gate, gla_backend="chunked",
                           kernel_backend="triton").to(device)
        fast.reset_parameters()
        spec = Mamba2Mixer(d, d // P, P, state_size=s["m"], use_gate=gate, gla_backend="chunked",
                           kernel_backend="torch").to(device, torch.float64)
        spec.load_state_dict(fast.state_dict())
        h = torch.randn(B, T, d, device=device, generator=gen)
        results = []
        for mixer, x in ((fast, h), (spec, h.double())):
            x = x.clone().requires_grad_(True)
            with nan_filled_empty() if mixer is fast else contextlib.nullcontext():
                y, (conv_state, ssm_state) = mixer(x, use_cache=True)
            weight = torch.randn(y.shape, device=device, generator=torch.Generator(device).manual_seed(1))
            grads = torch.autograd.grad((y.double() * weight.double()).sum(), [x, *mixer.parameters()])
            results.append([y, conv_state, ssm_state, *grads])
        names = ["out", "conv_state", "ssm_state", "dh"] + [f"d{n}" for n, _ in fast.named_parameters()]
        errors = {n: relative_error(a, b) for n, a, b in zip(names, *results)}
        worst = max(errors.values())
        out.append({"op": "mamba2 mixer", "dtype": "float32", "shape": f"B {B} T {T} d {d} heads {d // P}x{P} "
                    f"state {s['m']}{' gated' if gate else ''}", "reference": "torch glue, float64",
                    "errors": errors, "bound": 1e-4, "passed": bool(worst == worst and worst <= 1e-4)})
    return out


def _gla_checks() -> list[dict]:
    """The GLA op with the folded backward (ops/gla/triton): the checks of `slimkv bench kernels`, Rodimus shapes."""
    from .kernels import Shape, check_one

    bf, f32 = torch.bfloat16, torch.float32
    # both decay kinds (each has its own folded decay gradient), strong decays, both dtypes; the full set is
    # `slimkv bench kernels`
    out = [check_one(Shape("rodimus", 2, 2048, 1, 64, 4096, "channel"), bf),
           check_one(Shape("rodimus", 2, 2048, 1, 64, 4096, "channel"), f32),
           check_one(Shape("rodimus-strong", 2, 1024, 1, 64, 512, "channel"), bf, strong_decay=True),
           check_one(Shape("mamba2", 2, 2048, 32, 64, 64, "head"), bf),
           check_one(Shape("mamba2-strong", 2, 1024, 8, 64, 64, "head"), f32, strong_decay=True)]
    for r in out:
        r["op"] = "gla"
    return out


def run_checks(scale: str = "model", log: Callable[[str], None] = logger.info, gla: bool = True) -> list[dict]:
    """Every fused op in bf16 and float32 (plus CUDA-graph capture on CUDA); logs one line per check."""
    s = SHAPES[scale]
    device = torch.device("cuda" if scale == "model" or torch.cuda.is_available() else "cpu")
    gen = _gen(device)
    jobs = []
    for dtype in (torch.bfloat16, torch.float32):
        label = str(dtype).replace("torch.", "")
        jobs += [(f"norms {label}", lambda d=dtype: _norm_checks(s, device, d, gen)),
                 (f"ddts_gates {label}", lambda d=dtype: _gate_checks(s, device, d, gen)),
                 (f"causal_conv1d_silu {label}", lambda d=dtype: _conv_checks(s, device, d, gen)),
                 (f"swiglu {label}", lambda d=dtype: _swiglu_checks(s, device, d, gen))]
    jobs.append(("linear_cross_entropy", lambda: _ce_checks(s, device, gen)))
    jobs.append(("mamba2 mixer", lambda: _mamba2_checks(s, device, gen)))
    if device.type == "cuda":
        jobs.append(("cuda graphs", lambda: _graph_checks(s, device, gen)))
        if gla:
            jobs.append(("gla", _gla_checks))
    results = []
    for name, job in jobs:
        try:
            batch = job()
        except Exception as exc:  # record and go on: one broken op must not hide the others' results
            batch = [{"op": name, "passed": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}]
        for r in batch:
            results.append(r)
            log(format_check(r))
    return results


def format_check(r: dict) -> str:
    if "error" in r:
        return f"check {r['op']:22s} FAIL {r['error']}"
    worst = max(r["errors"], key=lambda n: r["errors"][n])
    shape = r.get("shape") or r.get("check", "")
    if isinstance(shape, dict):
        shape = f"B{shape['B']} T{shape['T']} H{shape['H']} K{shape['K']} V{shape['V']} {shape['decay']}"
    return (f"check {r['op']:22s} {r.get('dtype', ''):13s} {str(shape)[:44]:44s} worst {worst}="
            f"{r['errors'][worst]:.1e} (bound {r['bound']:.0e}) {'ok' if r['passed'] else 'FAIL'}")


def _bench(fn) -> float:
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def _time_op(name, make_inputs, fn, floor_fwd, floor_bwd, bandwidth) -> list[dict]:
    """fwd and fwd+bwd of fn(*inputs, backend=...) for the torch spec and the triton path, with peak memory."""
    rows = []
    for backend in ("torch", "triton"):
        inputs = make_inputs()
        leaves = [t for t in inputs if t is not None and t.is_floating_point() and t.requires_grad]
        outs = fn(*inputs, backend=backend)
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o is not None]
        grads_out = [torch.randn_like(o) for o in outs]

        def fwd():
            with torch.no_grad():
                fn(*inputs, backend=backend)

        def fwd_bwd():
            o = fn(*inputs, backend=backend)
            o = [t for t in (o if isinstance(o, tuple) else (o,)) if t is not None]
            torch.autograd.grad(o, leaves, grads_out)

        for mode, step, floor in (("fwd", fwd, floor_fwd), ("fwd_bwd", fwd_bwd, floor_fwd + floor_bwd)):
            step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            ms = _bench(step)
            rows.append({"op": name, "backend": backend, "mode": mode, "ms": ms, "floor_bytes": floor,
                         "floor_ms": floor / bandwidth * 1e3, "times_floor": ms / (floor / bandwidth * 1e3),
                         "peak_extra_gib": peak / 2**30})
        del inputs, outs, grads_out
        torch.cuda.empty_cache()
    return rows


def run_op_timings(bandwidth: float, log: Callable[[str], None] = logger.info, batch: int = 4) -> list[dict]:
    """Each op at the Rodimus-1.4B layer shapes (B x T = batch x 2048 tokens), bf16 activations as in autocast.
    bandwidth: measured copy bytes/s (floor_ms = floor bytes / bandwidth)."""
    from slimkv.ops.conv import causal_conv1d_silu
    from slimkv.ops.cross_entropy import linear_cross_entropy
    from slimkv.ops.ddts_gates import ddts_gates
    from slimkv.ops.norm import add_rms_norm, gated_rms_norm, rms_norm
    from slimkv.ops.swiglu import swiglu

    s = SHAPES["model"]
    T, d, e, m, f, V = s["T"], s["d"], s["e"], s["m"], s["f"], s["V"]
    N = batch * T
    dev = torch.device("cuda")
    bf = torch.bfloat16

    def leaf(*shape, dtype=torch.float32, grad=True):
        return torch.randn(*shape, device=dev).to(dtype).requires_grad_(grad)

    # fewest bytes: each input read once and each output written once (fwd); bwd adds reading the inputs and the
    # output gradients and writing the input gradients (weights and their gradients are negligible beside rows)
    specs = [
        ("rms_norm (fp32 in, bf16 out)", lambda: [leaf(N, d), leaf(d)],
         lambda x, w, backend: rms_norm(x, w, out_dtype=bf, backend=backend), N * d * 6, N * d * 10),
        ("add_rms_norm (bf16 + fp32 stream)", lambda: [leaf(N, d, dtype=bf), leaf(N, d), leaf(d)],
         lambda x, r, w, backend: add_rms_norm(x, r, w, out_dtype=bf, backend=backend), N * d * 12, N * d * 16),
        ("gated_rms_norm (fp32 o, bf16 z)", lambda: [leaf(N, e), leaf(N, e, dtype=bf), leaf(e)],
         lambda x, z, w, backend: gated_rms_norm(x, z, w, out_dtype=bf, backend=backend), N * e * 8, N * e * 14),
        ("gated_rms_norm + D skip (bf16 o, x~, z)",
         lambda: [leaf(N, e, dtype=bf), leaf(N, e, dtype=bf), leaf(N, e, dtype=bf), leaf(e), leaf(e)],
         lambda x, z, xs, D, w, backend: gated_rms_norm(x, z, w, out_dtype=bf, skip=xs, skip_scale=D,
                                                        backend=backend), N * e * 8, N * e * 14),
        ("ddts_gates", lambda: [leaf(N, 2 * m), leaf(N, m, dtype=bf)],
         lambda gt, k, backend: ddts_gates(gt, k, out_dtype=bf, backend=backend), N * m * 16, N * m * 26),
        ("causal_conv1d_silu (K 4)", lambda: [leaf(batch, T, e, dtype=bf), leaf(e, 4), leaf(e)],
         lambda x, w, b, backend: causal_conv1d_silu(x, w, b, backend=backend)[0], N * e * 4, N * e * 6),
        ("swiglu", lambda: [leaf(N, 2 * f, dtype=bf)], lambda u, backend: swiglu(u, backend=backend),
         N * f * 6, N * f * 10),
    ]
    labels = torch.randint(0, V, (N,), device=dev)

    def ce(h, w, backend):
        with torch.autocast("cuda", dtype=bf):
            return linear_cross_entropy(h, w, labels, backend=backend)

    specs.append(("linear_cross_entropy (autocast)", lambda: [leaf(N, d), leaf(V, d)], ce, N * d * 4 + V * d * 4,
                  N * d * 8 + V * d * 8))
    rows = []
    for name, make_inputs, fn, floor_fwd, floor_bwd in specs:
        try:
            got = _time_op(name, make_inputs, fn, floor_fwd, floor_bwd, bandwidth)
        except Exception as exc:  # record and go on
            got = [{"op": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}]
        for r in got:
            rows.append(r)
            if "error" in r:
                log(f"time {r['op']:34s} {r['error']}")
            else:
                log(f"time {r['op']:34s} {r['backend']:6s} {r['mode']:7s} {r['ms']:8.3f} ms  "
                    f"{r['times_floor']:5.1f}x floor  +{r['peak_extra_gib']:.2f} GiB")
    rows += _gla_timings(batch, bandwidth, log)
    return rows


def _gla_timings(batch: int, bandwidth: float, log) -> list[dict]:
    from .kernels import Shape, floors, gla_design_bytes, time_one

    shape = Shape("rodimus", batch, 2048, 1, 64, 4096, "channel")
    ceilings = {"copy_bytes_per_s": bandwidth, "bf16_flop_per_s": float("inf")}
    rows = []
    for mode in ("fwd", "fwd_bwd"):
        floor = floors(shape, torch.bfloat16, mode, ceilings)
        design = gla_design_bytes(shape.B, shape.T, shape.H, shape.K, shape.V, 2, mode)
        try:
            ms = time_one(shape, torch.bfloat16, "triton", mode)
        except Exception as exc:  # record and go on
            rows.append({"op": "gla", "mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        rows.append({"op": "gla (rodimus B%d T2048 K64 V4096)" % batch, "backend": "triton", "mode": mode, "ms": ms,
                     "floor_bytes": floor["bytes"], "floor_ms": floor["floor_ms_bytes"],
                     "times_floor": ms / floor["floor_ms_bytes"], "design_bytes": design["total"],
                     "design_over_floor": design["total"] / floor["bytes"], "design_stages": design["stages"]})
        log(f"time gla {mode:7s} {ms:8.3f} ms  floor {floor['floor_ms_bytes']:.3f} ms; the kernels move "
            f"{design['total'] / 1e6:.0f} MB = {design['total'] / floor['bytes']:.2f}x the floor's bytes")
    return rows


def copy_bandwidth() -> float:
    """Device-to-device copy bytes (read + written) per second, 1 GiB."""
    n = 1 << 28
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * 4 * n / (ms * 1e-3)


def matmul_rate() -> float:
    """bf16 8192^3 matmul FLOP/s on random data."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = _bench(lambda: a @ b)
    return 2 * 8192**3 / (ms * 1e-3)


__all__ = ["run_checks", "run_op_timings", "copy_bandwidth", "matmul_rate", "format_check"]
