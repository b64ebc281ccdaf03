"""The per-token work of one Mamba2Mixer forward + backward outside its matmuls and its scan, counted on any machine.

On the H200 the torch glue around Mamba2's scan (casts, strided elementwise ops, the conv's transposes, the float32
per-head norm) took 62% of a Mamba2-1.5B training step (benchmarks/results/train_mamba2_vs_rodimus_h200_2026-12-02.json).
This counts that glue where no GPU is: every aten op (views and the matmuls left out) whose output holds at least 32
values per token, the bytes those outputs take, and the Triton launches (run in the interpreter on a CPU), with the
GLA scan hidden from the count (layers/mamba2.py hands it the same tensors either way). Writes JSON with the commit.

    TRITON_INTERPRET=1 PYTHONPATH=src:. python benchmarks/mamba2_glue.py --out mamba2_glue.json
"""
from __future__ import annotations

import argparse
import inspect
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slimkv.bench.harness import machine_header, write_json

VIEWS_AND_MATMULS = {"mm", "addmm", "bmm", "view", "_unsafe_view", "t", "transpose", "expand", "unsqueeze", "squeeze",
                     "permute", "slice", "split", "split_with_sizes", "select", "alias", "detach", "as_strided",
                     "unflatten", "reshape"}


class GlueCounter(TorchDispatchMode):
    """Counts ops and output bytes of per-token tensors, except while `hidden` > 0 (the scan, Triton's interpreter)."""

    def __init__(self, min_numel: int):
        super().__init__()
        self.min_numel, self.hidden, self.ops, self.bytes, self.launches = min_numel, 0, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out])
                if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel]
        if outs and not self.hidden and name not in VIEWS_AND_MATMULS:
            self.ops[name] = self.ops.get(name, 0) + 1
            self.bytes += sum(t.numel() * t.element_size() for t in outs)
        return out

    def hide(self, fn, launch: bool = False):
        def run(*args, **kwargs):
            self.hidden += 1
            self.launches += launch
            try:
                return fn(*args, **kwargs)
            finally:
                self.hidden -= 1
        return run


def count_kernel_launches(counter: GlueCounter, *modules) -> None:
    """Route every `kernel[grid](...)` of the Triton modules through the counter (counted, its ops hidden)."""
    for module in modules:
        for name in dir(module):
            kernel = getattr(module, name)
            if name.endswith("_kernel") and hasattr(kernel, "__getitem__"):
                setattr(module, name, type("Launch", (), {
                    "__getitem__": lambda self, grid, k=kernel: counter.hide(k[grid], launch=True)})())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        from tests.triton_interpreter import patch_loop_bounds

        patch_loop_bounds()
    import slimkv.layers.mamba2 as mamba2
    from slimkv.ops.conv import triton as conv_triton
    from slimkv.ops.norm import triton as norm_triton

    B, T, d, H, P, N = 2, args.tokens, 256, 8, 64, 64
    fused = "kernel_backend" in inspect.signature(mamba2.Mamba2Mixer).parameters
    torch.manual_seed(0)
    mixer = mamba2.Mamba2Mixer(d, H, P, N, use_gate=True, gla_backend="chunked",
                               **({"kernel_backend": "triton"} if fused else {}))
    counter = GlueCounter(min_numel=B * T * 32)
    mamba2.gla = counter.hide(mamba2.gla)
    count_kernel_launches(counter, conv_triton, norm_triton)
    h = torch.randn(B, T, d, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), counter:
        y, _ = mixer(h)
        y.float().pow(2).sum().backward()
    write_json(args.out, {"header": machine_header(torch.device("cpu")), "shape": dict(B=B, T=T, d=d, H=H, P=P, N=N),
                          "fused_ops": fused, "aten_ops": sum(counter.ops.values()),
                          "mib_written": round(counter.bytes / 2**20, 2), "triton_launches": counter.launches,
                          "by_op": dict(sorted(counter.ops.items(), key=lambda kv: -kv[1]))})
    print(f"aten ops {sum(counter.ops.values())}, {counter.bytes / 2**20:.2f} MiB written, "
          f"{counter.launches} Triton launches; wrote {args.out}")


if __name__ == "__main__":
    main()
