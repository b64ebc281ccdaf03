"""Stage B's loss on its own: cross-entropy + KL(teacher || student) over two LM heads, forward + backward.

Two ways, same inputs, same process: "separate" = ops/cross_entropy (vocabulary chunks, recomputing backward) plus
a token-chunked, checkpointed KL (the path before ops/distill.py fused them; written out below, test-only), and
"fused" = ops/distill.linear_distill. Writes JSON with the commit, device and versions: the flops each runs
(torch's FlopCounterMode), the median seconds, and both losses.

    PYTHONPATH=src python benchmarks/distill_loss.py --tokens 1024 --out benchmarks/results/distill_loss_cpu.json
    PYTHONPATH=src python benchmarks/distill_loss.py --device cuda --tokens 65536 --chunk 4096 --out $OUT/distill.json
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from slimkv.bench.harness import machine_header, median_seconds, write_json
from slimkv.ops.cross_entropy import linear_cross_entropy
from slimkv.ops.distill import _kl_sum, linear_distill


def separate_kl(hs, ws, ht, wt, mask, chunk):
    """The former Stage B KL: token chunks under activation checkpointing (the backward recomputes both logits)."""
    m = mask.float()
    total = sum(checkpoint(_kl_sum, hs[i:i + chunk], ws, ht[i:i + chunk], wt, m[i:i + chunk], use_reentrant=False)
                for i in range(0, hs.shape[0], chunk))
    return total / m.sum().clamp_min(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--width", type=int, default=576, help="hidden size (SmolLM2-135M: 576)")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary (SmolLM2: 49152)")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    N, d, V = args.tokens, args.width, args.vocab
    hs, ws, ht, wt = (0.05 * torch.randn(*shape, generator=gen, device=device) for shape in ((N, d), (V, d), (N, d),
                                                                                               (V, d)))
    labels = torch.randint(0, V, (N,), generator=gen, device=device)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    ce_backend = "auto" if device.type == "cuda" else "chunked"
    ways = {
        "separate": lambda h, w: (linear_cross_entropy(h, w, labels, backend=ce_backend)
                                  + separate_kl(h, w, ht, wt, labels != -100, args.chunk)),
        "fused": lambda h, w: linear_distill(h, w, labels, ht, wt, 1.0, args.chunk),
    }
    report = {"header": machine_header(device), "tokens": N, "width": d, "vocab": V, "chunk": args.chunk,
              "bf16_autocast": autocast["enabled"], "ways": {}}
    for name, way in ways.items():
        def step():
            h, w = hs.clone().requires_grad_(), ws.clone().requires_grad_()
            with torch.autocast(**autocast):
                loss = way(h, w)
            loss.backward()
            return loss.detach()
        with FlopCounterMode(display=False) as flops:
            loss = step()
        seconds, timed = median_seconds(step, device, repeats=args.repeats)
        report["ways"][name] = {"gflop": flops.get_total_flops() / 1e9, "median_s": seconds, "timed": timed,
                                "loss": float(loss)}
        print(f"{name:9s} {flops.get_total_flops() / 1e9:8.1f} GFLOP  {seconds * 1e3:9.1f} ms  loss {float(loss):.6f}")
    sep, fused = report["ways"]["separate"], report["ways"]["fused"]
    report["speedup"] = sep["median_s"] / fused["median_s"]
    print(f"fused is {report['speedup']:.2f}x faster; wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()
