"""slimkv generate MODEL --prompt TEXT: text from a saved model (slimkv Rodimus/Rodimus+, RecurFormer, or any HF
causal LM), streamed as it is produced, with the cache size at the end."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a saved model folder (config.json + weights), e.g. runs/NAME/model")
    parser.add_argument("--prompt", required=True, help="prompt text ('-' reads standard input)")
    parser.add_argument("--tokenizer", help="tokenizer.json or a folder (default: the model folder, then its parent)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (default: sampling)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write prompt, completion, timings and cache bytes here")


def find_tokenizer(model_dir: Path, explicit: str | None):
    from ..data.tokenizer import load_tokenizer

    if explicit:
        return load_tokenizer(explicit)
    for candidate in (model_dir, model_dir.parent):
        if (candidate / "tokenizer.json").is_file() or (candidate / "tokenizer_config.json").is_file():
            return load_tokenizer(candidate if (candidate / "tokenizer_config.json").is_file()
                                  else candidate / "tokenizer.json")
    raise FileNotFoundError(f"no tokenizer next to {model_dir}; pass --tokenizer")


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, TextStreamer

    import slimkv  # noqa: F401  (registers the Auto classes)

    from ..device import resolve_device
    from ..models.memory import cache_nbytes

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json)")
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise ValueError("the prompt is empty")
    device = resolve_device(args.device)
    tokenizer = find_tokenizer(model_dir, args.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and ids.shape[1] + args.max_new_tokens > limit:
        raise ValueError(f"prompt ({ids.shape[1]} tokens) + --max-new-tokens ({args.max_new_tokens}) exceeds the "
                         f"model's max_position_embeddings={limit}")
    torch.manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True) if not args.json else None
    sampling = {} if args.greedy else {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    # models with a preallocated constant-size cache get it up front, so its bytes can be reported afterwards
    cache = model.allocate_cache(1) if hasattr(model, "allocate_cache") else None
    extra = {"past_key_values": cache} if cache is not None else {}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             do_sample=not args.greedy, streamer=streamer, return_dict_in_generate=True,
                             pad_token_id=tokenizer.eos_token_id, **sampling, **extra)
    seconds = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1]:]
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    nbytes = cache_nbytes(cache) if cache is not None else 0
    print(f"\n[{len(new)} tokens in {seconds:.2f}s, {len(new) / seconds:.1f} tok/s; cache {nbytes:,} bytes]",
          file=sys.stderr)
    if args.json:
        completion = tokenizer.decode(new, skip_special_tokens=True)
        print(completion)
        Path(args.json).write_text(json.dumps({"prompt": prompt, "completion": completion, "new_tokens": len(new),
                                               "seconds": seconds, "cache_bytes": nbytes}, indent=2))
    return 0
