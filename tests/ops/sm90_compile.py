"""Compile every fused-op and GLA Triton kernel for Hopper (sm_90a) on a machine without a GPU, and report ptxas's
register and spill counts. Run as a script WITHOUT TRITON_INTERPRET (tests/ops/test_sm90_compile.py does):

    env -u TRITON_INTERPRET python tests/ops/sm90_compile.py [--json out.json]

Each op's public function runs on small CPU tensors with every `kernel[grid](...)` launch intercepted: the recorded
arguments go through the JIT's own binder (the signature, constexprs and alignment specialisations a real launch
gets), and the kernel is compiled ahead of time for GPUTarget("cuda", 90, 32) with the launch's options, through Triton's
full pipeline (TTIR, TTGIR, LLVM IR, PTX, cubin) and the ptxas bundled with it. This catches what the interpreter
cannot: type errors of the compiler proper, unsupported operations, resource limits, register spills.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET: kernels must be JIT functions"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


@contextlib.contextmanager
def recording(module, names, launches):
    """Replace module.<name> kernels by recorders; launches gets (kernel, args, kwargs) per launch."""
    originals = {n: getattr(module, n) for n in names}

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel
            self.fn = kernel.fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((self.kernel, args, kwargs))
            return launch

    for n in names:
        setattr(module, n, Recorder(originals[n]))
    try:
        yield
    finally:
        for n, k in originals.items():
            setattr(module, n, k)


def specialise(kernel, args, kwargs):
    """The JIT's own binding and specialisation (pointer dtypes and 16-byte alignment, integers equal to 1 or
    divisible by 16, constexprs), as kernel[grid](...) does at launch, for the Hopper target."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options


def ptxas_usage(ptx: str) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", path, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": (int(spill_st.group(1)) if spill_st else 0) + (int(spill_ld.group(1)) if spill_ld else 0)}


def compile_all(launches, only: str | None = None):
    seen, rows = set(), []
    for kernel, args, kwargs in launches:
        if only and only not in kernel.fn.__name__:
            continue
        src, options = specialise(kernel, args, dict(kwargs))
        if src.hash() in seen:
            continue
        seen.add(src.hash())
        compiled = triton.compile(src, target=TARGET, options=options.__dict__)
        usage = ptxas_usage(compiled.asm["ptx"])
        names = kernel.arg_names
        rows.append({"kernel": kernel.fn.__name__, "num_warps": options.num_warps, "num_stages": options.num_stages,
                     "shared_bytes": compiled.metadata.shared,
                     "constexprs": {names[k[0]]: v for k, v in src.constants.items()
                                    if len(k) == 1 and isinstance(v, (int, float)) and kernel.params[k[0]].is_constexpr},
                     **usage})
    return rows


def record_launches():
    from slimkv.ops.conv import causal_conv1d_silu
    from slimkv.ops.conv import triton as conv_t
    from slimkv.ops.cross_entropy import linear_cross_entropy
    from slimkv.ops.cross_entropy import triton as ce_t
    from slimkv.ops.ddts_gates import ddts_gates
    from slimkv.ops.ddts_gates import triton as gates_t
    from slimkv.ops.gla.triton import autograd as gla_t
    from slimkv.ops.norm import add_rms_norm, gated_rms_norm, rms_norm
    from slimkv.ops.norm import triton as norm_t
    from slimkv.ops.swiglu import swiglu
    from slimkv.ops.swiglu import triton as swiglu_t

    launches = []
    bf = torch.bfloat16

    def leaf(*shape, dtype=torch.float32):
        return torch.randn(*shape).to(dtype).requires_grad_(True)

    def fwd_bwd(outs):
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o is not None and o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    # the model's widths: d 2048 (norms), e 4096 (gated norm, conv), m 64 (gates), f 2736 (SwiGLU)
    with recording(norm_t, ["rms_norm_fwd_kernel", "rms_norm_bwd_kernel"], launches):
        fwd_bwd(rms_norm(leaf(8, 2048), leaf(2048), out_dtype=bf, backend="triton"))
        fwd_bwd(add_rms_norm(leaf(8, 2048, dtype=bf), leaf(8, 2048), leaf(2048), out_dtype=bf, backend="triton"))
        fwd_bwd(gated_rms_norm(leaf(8, 4096), leaf(8, 4096, dtype=bf), leaf(4096), out_dtype=bf, backend="triton"))
        fwd_bwd(gated_rms_norm(leaf(8, 4096, dtype=bf), leaf(8, 4096, dtype=bf), leaf(4096), out_dtype=bf,
                               skip=leaf(8, 4096, dtype=bf), skip_scale=leaf(4096), backend="triton"))
    with recording(gates_t, ["ddts_gates_fwd_kernel", "ddts_gates_bwd_kernel"], launches):
        fwd_bwd(ddts_gates(leaf(8, 128), leaf(8, 64, dtype=bf), out_dtype=bf, backend="triton"))
    with recording(conv_t, ["conv_silu_fwd_kernel", "conv_silu_bwd_kernel"], launches):
        # training (no state) and prefill after a cache (state in, final state out)
        fwd_bwd(causal_conv1d_silu(leaf(2, 64, 2 * 4096, dtype=bf)[..., :4096], leaf(4096, 4), leaf(4096),
                                   backend="triton")[0])
        fwd_bwd(causal_conv1d_silu(leaf(2, 64, 4096, dtype=bf), leaf(4096, 4), leaf(4096), leaf(2, 4096, 3, dtype=bf),
                                   output_final_state=True, backend="triton"))
    with recording(swiglu_t, ["swiglu_fwd_kernel", "swiglu_bwd_kernel"], launches):
        fwd_bwd(swiglu(leaf(8, 2 * 2736, dtype=bf), backend="triton"))
    with recording(ce_t, ["ce_fwd_kernel_chunk", "ce_bwd_kernel_chunk"], launches):
        with torch.autocast("cpu", dtype=bf):
            loss = linear_cross_entropy(leaf(8, 64), leaf(1000, 64), torch.randint(0, 1000, (8,)), chunk_size=512,
                                        backend="triton")
        fwd_bwd(loss)
    gla_names = ["gla_fwd_kernel_prep", "gla_fwd_kernel_intra_head", "gla_fwd_kernel_intra_channel",
                 "gla_fwd_kernel_state", "gla_bwd_kernel_state_grad", "gla_bwd_kernel_qk_grad",
                 "gla_bwd_kernel_intra_channel"]
    with recording(gla_t, gla_names, launches):
        # Rodimus (one head, K 64, V 4096, per-channel decay) and Mamba2-like (per-head decay), bf16
        for g_shape in ((1, 128, 1, 64), (1, 128, 4)):
            H = g_shape[2]
            V = 4096 if H == 1 else 64
            q, k = leaf(1, 128, H, 64, dtype=bf), leaf(1, 128, H, 64, dtype=bf)
            v = leaf(1, 128, H, V, dtype=bf)
            g = (-torch.rand(*g_shape)).requires_grad_(True)
            o, _ = gla_t.gla_triton(q, k, v, g)
            fwd_bwd(o)
    return launches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=None, help="compile only kernels whose name contains this")
    args = parser.parse_args()
    rows = compile_all(record_launches(), args.only)
    for r in rows:
        print(f"{r['kernel']:32s} warps {r['num_warps']:2d} stages {r['num_stages']} regs {r['registers']} "
              f"spills {r['spill_bytes']} B  smem {r['shared_bytes']} B  {r['constexprs']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
