"""`slimkv generate`: text from a saved model (slimkv Rodimus/Rodimus+, RecurFormer, or any Hugging Face causal LM),
streamed as it is produced, with the bytes its cache held at the end.

    result = generate_text(GenerateConfig(model="runs/main/model", prompt="It is a truth", greedy=True))
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import ranged, setting


@dataclass
class GenerateConfig:
    """What `generate_text` loads and how it samples."""

    # a saved model folder (config.json + weights), e.g. runs/NAME/model
    model: str = setting(positional=True)
    # prompt text ('-' reads standard input)
    prompt: str = setting()
    # tokenizer.json or a folder ("" = the model folder, then its parent)
    tokenizer: str = ""
    max_new_tokens: int = ranged(64, ge=1)
    # argmax decoding (default: sampling)
    greedy: bool = False
    temperature: float = ranged(0.8, gt=0)
    top_k: int = ranged(50, ge=0)
    top_p: float = ranged(0.95, gt=0, le=1)
    seed: int = 0
    # where to run: auto, cpu, cuda, cuda:N or mps
    device: str = "cpu"


@dataclass
class GenerateResult:
    prompt: str
    completion: str
    new_tokens: int
    seconds: float
    cache_bytes: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def generate_text(config: GenerateConfig, on_text: Callable[[str], None] | None = None) -> GenerateResult:
    """Load the model and its tokenizer, generate, and count the cache's bytes. `on_text` receives the completion
    piece by piece as it is decoded (None: nothing is streamed)."""
    from transformers import AutoModelForCausalLM, TextStreamer

    from .. import models  # noqa: F401  (registers the slimkv classes with the Auto factories)
    from ..data.tokenizer import find_tokenizer
    from ..device import resolve_device
    from ..models.memory import cache_nbytes

    model_dir = Path(config.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json)")
    if not config.prompt:
        raise ValueError("the prompt is empty")
    device = resolve_device(config.device)
    tokenizer = find_tokenizer(model_dir, config.tokenizer or None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    ids = tokenizer(config.prompt, return_tensors="pt").input_ids.to(device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and ids.shape[1] + config.max_new_tokens > limit:
        raise ValueError(f"prompt ({ids.shape[1]} tokens) + --max-new-tokens ({config.max_new_tokens}) exceeds the "
                         f"model's max_position_embeddings={limit}")
    torch.manual_seed(config.seed)
    streamer = None
    if on_text is not None:
        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                on_text(text + ("\n" if stream_end else ""))

        streamer = _Streamer(tokenizer, skip_prompt=True)
    sampling = {} if config.greedy else {"temperature": config.temperature, "top_k": config.top_k,
                                         "top_p": config.top_p}
    # models with a preallocated constant-size cache get it up front, so its bytes can be reported afterwards
    cache = model.allocate_cache(1) if hasattr(model, "allocate_cache") else None
    extra = {"past_key_values": cache} if cache is not None else {}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=config.max_new_tokens,
                             do_sample=not config.greedy, streamer=streamer, return_dict_in_generate=True,
                             pad_token_id=tokenizer.eos_token_id, **sampling, **extra)
    seconds = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1]:]
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    return GenerateResult(prompt=config.prompt, completion=tokenizer.decode(new, skip_special_tokens=True),
                          new_tokens=len(new), seconds=seconds,
                          cache_bytes=cache_nbytes(cache) if cache is not None else 0)
