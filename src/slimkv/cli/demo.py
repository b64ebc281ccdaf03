"""slimkv demo: build a small Rodimus+ model, generate with its constant-size cache, compare memory with a
same-size Transformer's KV cache. Runs in seconds on a CPU; no downloads."""
from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-type", choices=["rodimus", "rodimus_plus"], default="rodimus_plus")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--window-size", type=int, default=512, help="official W; each query sees W/2 tokens")
    parser.add_argument("--prompt", default="The cache of a recurrent model does not grow")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--json", help="also write the numbers here")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import RodimusConfig, RodimusForCausalLM
    from ..models.memory import rodimus_cache_bytes, transformer_kv_bytes

    torch.manual_seed(0)
    config = RodimusConfig(vocab_size=256, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                           block_type=args.block_type, window_size=args.window_size,
                           num_heads=max(args.hidden_size // 64, 1), max_position_embeddings=1 << 20)
    model = RodimusForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.block_type}: d={args.hidden_size}, {args.layers} layers, {params / 1e6:.2f}M parameters "
          "(random weights: the text is noise, the memory is real)")

    # bytes as the tokenizer (UTF-8 bytes, vocab 256)
    ids = torch.tensor([list(args.prompt.encode())])
    cache = model.allocate_cache(1)
    before = cache.nbytes()
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, past_key_values=cache)
        seconds = time.perf_counter() - start
    text = bytes(int(t) for t in out[0, ids.shape[1]:]).decode("utf-8", errors="replace")
    print(f"generated {args.new_tokens} tokens in {seconds:.2f}s ({args.new_tokens / seconds:.1f} tok/s): {text!r}")
    print(f"cache bytes before generating: {before:,}; after {cache.seen_tokens} tokens: {cache.nbytes():,}")

    state = rodimus_cache_bytes(model, batch=1, dtype=torch.bfloat16)
    rows = []
    print(f"\n{'context':>9}  {args.block_type + ' state':>18}  {'Transformer KV':>16}  ratio")
    for tokens in (1024, 4096, 16384, 65536, 262144):
        kv = transformer_kv_bytes(args.layers, config.num_heads, config.attn_head_dim, tokens)
        rows.append({"tokens": tokens, "state_bytes": state, "transformer_kv_bytes": kv})
        print(f"{tokens:>9,}  {state / 2**20:>15.2f} MB  {kv / 2**20:>13.2f} MB  {kv / state:6.1f}x")
    print("(bf16 activations, batch 1; the recurrent state stays float32. Transformer: same width and depth, MHA)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config.to_dict(), "params": params, "generate_tokens_per_s": args.new_tokens / seconds,
                       "memory": rows}, f, indent=2)
    return 0
