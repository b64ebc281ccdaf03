"""`slimkv eval MODEL --ppl FILE_OR_SPLIT [--seq-len N] [--stride S] [--json PATH]`

MODEL: a Hugging Face folder (slimkv Rodimus/Rodimus+ or Llama) or a `slimkv train` run directory.
FILE_OR_SPLIT: a UTF-8 text file, or a corpus split name ("heldout", "train") of `slimkv fetch corpus`.
Prints token perplexity, bits per byte and per-byte perplexity; recurrent models carry their state across windows.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SPLIT_NAMES = ("heldout", "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hugging Face model folder or training run directory")
    parser.add_argument("--ppl", required=True, metavar="FILE_OR_SPLIT",
                        help="text file, or corpus split name: " + ", ".join(SPLIT_NAMES))
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per forward window (default 512)")
    parser.add_argument("--stride", type=int, default=None,
                        help="sliding-window step for attention models (default seq_len / 2)")
    parser.add_argument("--mode", choices=("recurrent", "sliding"), default=None,
                        help="override: carry the cache across windows, or slide a window (default by model type)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0 = all; the byte count is scaled in proportion)")
    parser.add_argument("--data-dir", default=None, help="corpus data directory (default $SLIMKV_DATA or ./data)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise ValueError(f"{str(path)!r} is empty")
    return text


def _ids_and_bytes(target: str, tokenizer, data_dir: str | None, progress: bool) -> tuple[torch.Tensor, int, str]:
    from ..data import document_separator_id

    try:
        separator = document_separator_id(tokenizer)
    except ValueError:
        separator = None
    path = Path(target)
    if path.is_file():
        from ..eval.perplexity import encode_text

        text = _read_text_file(path)
        return encode_text(tokenizer, text, separator), len(text.encode("utf-8")), str(path)
    if target in SPLIT_NAMES:
        from ..data import encode_documents, fetch_corpus, read_split_documents

        info = fetch_corpus(data_dir, progress=progress)
        documents = read_split_documents(info, target)
        if not documents:
            raise ValueError(f"corpus split {target!r} is empty")
        ids = encode_documents(documents, tokenizer, progress=progress, desc=f"tokenise {target}")
        prefix = [separator] if separator is not None else []
        ids = torch.cat([torch.tensor(prefix, dtype=torch.long), torch.from_numpy(ids)])
        return ids, sum(len(doc.encode("utf-8")) for doc in documents), f"corpus split {target}"
    raise FileNotFoundError(f"--ppl {target!r} is neither a file nor a corpus split ({', '.join(SPLIT_NAMES)})")


def run(args: argparse.Namespace) -> int:
    from ..eval.loading import load_model_and_tokenizer
    from ..eval.perplexity import _check_lengths, default_mode, perplexity

    model, tokenizer = load_model_and_tokenizer(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model!r} has no tokenizer (tokenizer.json); save one beside the model")
    mode = args.mode or default_mode(model)
    stride = args.stride or (max(1, args.seq_len // 2) if mode == "sliding" else args.seq_len)
    # fail on bad lengths before tokenising a whole corpus
    _check_lengths(model, args.seq_len, stride)
    if args.device != "cpu":
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA device is available")
        model = model.to(args.device)
    ids, num_bytes, what = _ids_and_bytes(args.ppl, tokenizer, args.data_dir, not args.quiet)
    if args.max_tokens and len(ids) > args.max_tokens:
        # keep the byte count consistent: scale it by the share of tokens kept
        num_bytes = max(1, round(num_bytes * args.max_tokens / len(ids)))
        ids = ids[:args.max_tokens]
    result = perplexity(model, ids, num_bytes, seq_len=args.seq_len, stride=stride, mode=mode,
                        progress=not args.quiet)
    record = {"model": str(args.model), "text": what, **result.as_dict()}
    print(f"{what}: {result.tokens} tokens, {result.bytes} bytes; token ppl {result.token_ppl:.3f}, "
          f"bits/byte {result.bits_per_byte:.4f}, byte ppl {result.byte_ppl:.4f} ({result.mode}, seq_len "
          f"{result.seq_len}" + (f", stride {result.stride})" if result.mode == "sliding" else ")"))
    if args.json:
        from ..train.checkpoint import write_text_atomic

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return 0
