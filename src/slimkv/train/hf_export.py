"""Exported model folders that plain Hugging Face tooling uses as they are.

`save_model_folder(model, target, tokenizer_source)` writes safetensors + config.json + generation_config.json and,
beside them, the run's tokenizer. What makes `AutoTokenizer`, `model.generate()` and
`pipeline("text-generation", model=DIR)` work without arguments:

- `use_cache: true` in both configs, so generate() steps the constant-size cache instead of recomputing the prefix;
- bos / eos / pad ids in both configs, taken from the tokenizer, so generation stops at the end-of-text token and
  batched prompts can be padded (our BPE has one special token, `<|endoftext|>`, which is all three);
- a tokenizer with a pad token and `model_max_length` = the model's position limit.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn


def prepared_tokenizer(tokenizer_source: Path | str, max_length: int | None):
    """The tokenizer as it should be saved beside a model: eos, bos and pad set (falling back to eos, then to the
    document separator), model_max_length = `max_length` when given."""
    from ..data.tokenizer import document_separator_id, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(document_separator_id(tokenizer))
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if max_length:
        tokenizer.model_max_length = int(max_length)
    # byte-level BPE (ours and the fetched pretrained ones) decodes exactly; the WordPiece-era space clean-up
    # would strip spaces before punctuation
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.init_kwargs["clean_up_tokenization_spaces"] = False
    return tokenizer


def set_generation_defaults(model: nn.Module, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> None:
    """use_cache and the special-token ids, in the model config and its generation config alike."""
    configs = [model.config] + ([model.generation_config] if getattr(model, "generation_config", None) else [])
    for config in configs:
        config.use_cache = True
        config.bos_token_id, config.eos_token_id, config.pad_token_id = bos_id, eos_id, pad_id


def save_model_folder(model: nn.Module, target: Path | str, tokenizer_source: Path | str | None) -> None:
    """`model.save_pretrained(target)` with generation defaults set, and the tokenizer (if any) saved beside it."""
    target = Path(target)
    tokenizer = None
    if tokenizer_source is not None:
        tokenizer = prepared_tokenizer(tokenizer_source, getattr(model.config, "max_position_embeddings", None))
        set_generation_defaults(model, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    else:
        set_generation_defaults(model, model.config.bos_token_id, model.config.eos_token_id,
                                model.config.pad_token_id)
    model.save_pretrained(target)
    if tokenizer is not None:
        tokenizer.save_pretrained(target)
