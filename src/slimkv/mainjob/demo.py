"""`slimkv demo` (`make demo`): a small random Rodimus+ model generating through its constant-size cache, and its
state beside a same-size Transformer's KV cache. Runs in seconds on a CPU; no downloads.

    result = run_demo(DemoConfig(block_type="rodimus"))    # text, tokens/s, cache bytes, memory rows
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from ..config import ranged

CONTEXTS = (1024, 4096, 16384, 65536, 262144)


@dataclass
class DemoConfig:
    """What the demo builds and generates."""

    # Rodimus (purely recurrent) or Rodimus+ (recurrent + sliding-window shared-key attention)
    block_type: Literal["rodimus", "rodimus_plus"] = "rodimus_plus"
    # model width d
    hidden_size: int = ranged(256, ge=1)
    layers: int = ranged(4, ge=1)
    # official W: each query sees W/2 previous tokens
    window_size: int = ranged(512, ge=2, even=True)
    # prompt, fed as UTF-8 bytes (vocabulary 256)
    prompt: str = "The cache of a recurrent model does not grow"
    # tokens to generate (greedy)
    new_tokens: int = ranged(48, ge=1)


def run_demo(config: DemoConfig) -> dict:
    """Build the model (seed 0), generate greedily with a preallocated cache, count the bytes -> a result dict."""
    from ..models import RodimusConfig, RodimusForCausalLM
    from ..models.memory import rodimus_cache_bytes, transformer_kv_bytes

    torch.manual_seed(0)
    model_config = RodimusConfig(vocab_size=256, hidden_size=config.hidden_size, num_hidden_layers=config.layers,
                                 block_type=config.block_type, window_size=config.window_size,
                                 num_heads=max(config.hidden_size // 64, 1), max_position_embeddings=1 << 20)
    model = RodimusForCausalLM(model_config).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.tensor([list(config.prompt.encode())])
    cache = model.allocate_cache(1)
    before = cache.nbytes()
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=config.new_tokens, do_sample=False, past_key_values=cache)
        seconds = time.perf_counter() - start
    text = bytes(int(t) for t in out[0, ids.shape[1]:]).decode("utf-8", errors="replace")
    state = rodimus_cache_bytes(model, batch=1, dtype=torch.bfloat16)
    rows = [{"tokens": tokens, "state_bytes": state,
             "transformer_kv_bytes": transformer_kv_bytes(config.layers, model_config.num_heads,
                                                          model_config.attn_head_dim, tokens)}
            for tokens in CONTEXTS]
    return {"config": model_config.to_dict(), "params": params, "text": text, "seconds": seconds,
            "generate_tokens_per_s": config.new_tokens / seconds, "cache_bytes_before": before,
            "cache_bytes_after": cache.nbytes(), "seen_tokens": cache.seen_tokens, "memory": rows}
