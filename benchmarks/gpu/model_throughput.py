"""Training tokens/s and peak memory: Rodimus-1.4B shape vs a same-size Llama (Hugging Face, SDPA), one GPU.

    PYTHONPATH=src python3 benchmarks/gpu/model_throughput.py --out $OUT [--seq 2048 16384] [--steps 5]

Each (model, length) runs in its own process (a clean allocator, and an out-of-memory batch does not poison the next):
bf16 autocast over fp32 weights, fused AdamW, activation checkpointing from 16K tokens on, the largest batch from
--batches that fits, 2 warm-up steps, then --steps timed steps (CUDA-synchronised wall clock). Writes
model_throughput.json (+ .png) under --out and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

VOCAB = 126464
HIDDEN = 2048


def build(model: str, seq: int, llama_layers: int | None = None):
    if model == "rodimus":
        from slimkv import RodimusConfig, RodimusForCausalLM

        cfg = RodimusConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=48, block_type="rodimus",
                            mem_size=64, expand_ratio=2.0, tie_word_embeddings=True, gla_backend="auto",
                            max_position_embeddings=max(seq, 2048))
        return RodimusForCausalLM(cfg)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=5632, num_hidden_layers=llama_layers,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=max(seq, 2048),
                      tie_word_embeddings=True, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def count_params(model: str, llama_layers: int | None = None) -> int:
    import torch

    with torch.device("meta"):
        m = build(model, 2048, llama_layers)
    return sum(p.numel() for p in m.parameters())


def matched_llama_layers() -> tuple[int, int, int]:
    """Llama depth whose parameter count is closest to Rodimus-1.4B's (same width, vocab, tied embeddings)."""
    target = count_params("rodimus")
    one, two = count_params("llama", 1), count_params("llama", 2)
    per_layer, base = two - one, one - (two - one)
    layers = max(1, round((target - base) / per_layer))
    return layers, target, base + layers * per_layer


def run_one(model: str, seq: int, batches: list[int], steps: int, llama_layers: int) -> dict:
    import torch

    torch.manual_seed(0)
    device = torch.device("cuda")
    checkpointing = seq >= 16384
    for batch in batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        net = opt = None
        try:
            net = build(model, seq, llama_layers).to(device)
            if checkpointing:
                enable = getattr(net, "activation_checkpointing_enable", None) or net.gradient_checkpointing_enable
                enable()
            net.train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
            ids = torch.randint(0, VOCAB, (batch, seq), device=device)

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = net(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            for _ in range(2):
                loss = step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                loss = step()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            return {"model": model, "seq": seq, "batch": batch, "checkpointing": checkpointing, "steps": steps,
                    "tokens_per_s": batch * seq * steps / seconds, "step_s": seconds / steps,
                    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": float(loss),
                    "params": sum(p.numel() for p in net.parameters())}
        except torch.OutOfMemoryError:
            del net, opt
            continue
    return {"model": model, "seq": seq, "error": f"out of memory at every batch in {batches}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    parser.add_argument("--seq", type=int, nargs="+", default=[2048, 16384])
    parser.add_argument("--models", nargs="+", default=["rodimus", "llama"])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 8, 4, 2, 1])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SEQ"), help=argparse.SUPPRESS)
    parser.add_argument("--llama-layers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one[0], int(args.one[1]), args.batches, args.steps, args.llama_layers)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    layers, rodimus_params, llama_params = matched_llama_layers()
    print(f"Rodimus-1.4B shape: {rodimus_params / 1e9:.3f} B params; Llama with {layers} layers: "
          f"{llama_params / 1e9:.3f} B", flush=True)
    results = []
    for seq in args.seq:
        for model in args.models:
            cmd = [sys.executable, __file__, "--one", model, str(seq), "--steps", str(args.steps),
                   "--llama-layers", str(layers), "--batches", *map(str, args.batches)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = json.loads(lines[-1][7:]) if lines else {
                "model": model, "seq": seq, "error": (proc.stderr or proc.stdout)[-600:]}
            results.append(result)
            print(json.dumps(result), flush=True)
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "commit": os.environ.get("SLIMKV_COMMIT", ""), "llama_layers": layers,
              "params": {"rodimus": rodimus_params, "llama": llama_params}, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model_throughput.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out / "model_throughput.json")
    print("\n| model | T | batch | ckpt | tokens/s | step s | peak GiB |\n|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['model']} | {r['seq']} | - | - | {r['error'][:60]} | - | - |")
        else:
            print(f"| {r['model']} | {r['seq']} | {r['batch']} | {r['checkpointing']} | {r['tokens_per_s']:.0f} | "
                  f"{r['step_s']:.2f} | {r['peak_mem_gib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
