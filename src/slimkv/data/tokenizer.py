"""Tokenizers: a byte-level BPE trained on the training split, or a pretrained model's own tokenizer.

`train_tokenizer(train_text_path, vocab_size)` -> a `tokenizers.Tokenizer` (GPT-2-style byte-level BPE, no unknown
tokens, `<|endoftext|>` as the only special token, id 0) and, with `save_dir`, a Hugging Face folder holding
`tokenizer.json` + `tokenizer_config.json`, loadable by `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` and
by `AutoTokenizer.from_pretrained(folder)`.
`load_tokenizer(spec)` accepts either a path to a `tokenizer.json` or a Hugging Face folder (for example a saved
SmolLM2 folder) and returns a `PreTrainedTokenizerFast`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from slimkv.data.corpus import DOCUMENT_SEPARATOR, atomic_write_bytes

EOS_TOKEN = "<|endoftext|>"


def iter_documents(text_path: Path | str, on_invalid: str = "error") -> Iterator[str]:
    """Documents of a split file (separated by DOCUMENT_SEPARATOR), read as UTF-8 (see `read_corpus_text`)."""
    text, _ = read_corpus_text(Path(text_path), on_invalid)
    for doc in text.split(DOCUMENT_SEPARATOR):
        doc = doc.strip("\n")
        if doc:
            yield doc


def read_corpus_text(path: Path, on_invalid: str = "error") -> tuple[str, int]:
    """Read a corpus file as UTF-8 -> (text, number of undecodable bytes dropped).

    on_invalid="error" (the default, used by the whole pipeline): undecodable bytes raise ValueError naming the
    file and the first bad byte offset, because a silently damaged corpus skews every perplexity computed on it.
    on_invalid="skip": undecodable bytes are dropped and counted.
    An empty (or whitespace-only) file raises ValueError either way.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', not {on_invalid!r}")
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
        skipped = 0
    except UnicodeDecodeError as err:
        if on_invalid == "error":
            raise ValueError(f"{path} is not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 4]!r}); "
                             f"re-encode it as UTF-8 or read it with on_invalid='skip'") from None
        text = raw.decode("utf-8", errors="ignore")
        skipped = len(raw) - len(text.encode("utf-8"))
    if not text.strip():
        raise ValueError(f"corpus file {path} is empty")
    return text, skipped


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """A stable identity for a tokenizer: sha256 of its canonical JSON (vocabulary, merges, normalisation)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def train_tokenizer(train_text_path: Path | str, vocab_size: int = 8192, save_dir: Path | str | None = None,
                    min_frequency: int = 2, progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on one split file (pass the TRAIN split only, so held-out text stays unseen).

    vocab_size counts the 256 byte symbols and `<|endoftext|>` (id 0). With `save_dir`, writes
    `save_dir/tokenizer.json` and a `tokenizer_config.json` (eos/bos/unk = `<|endoftext|>`) atomically.
    """
    if vocab_size < 258 or vocab_size > 2**32 - 1:
        raise ValueError(f"vocab_size must be at least 258 (256 bytes + <|endoftext|> + one merge), got {vocab_size}")
    path = Path(train_text_path)
    # byte-level: no unknown token ever, spaces fold into the following word ("Ġword") as in GPT-2
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=progress,
                                  special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(iter_documents(path), trainer=trainer)
    if save_dir is not None:
        save_tokenizer(tokenizer, Path(save_dir))
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, save_dir: Path) -> Path:
    """Write a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json); returns the json path."""
    save_dir.mkdir(parents=True, exist_ok=True)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN,
              "unk_token": EOS_TOKEN, "model_max_length": 1_000_000_000, "clean_up_tokenization_spaces": False}
    atomic_write_bytes(save_dir / "tokenizer_config.json", (json.dumps(config, indent=1) + "\n").encode())
    atomic_write_bytes(save_dir / "tokenizer.json", tokenizer.to_str(pretty=True).encode("utf-8"))
    return save_dir / "tokenizer.json"


def load_tokenizer(spec: Path | str):
    """A `transformers.PreTrainedTokenizerFast` from a `tokenizer.json` path or a Hugging Face folder.

    A bare tokenizer.json gets `<|endoftext|>` as eos when it has that token. Use `document_separator_id` for the id
    that joins documents in packed data.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(spec)
    if path.is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        if tokenizer.eos_token is None and tokenizer.convert_tokens_to_ids(EOS_TOKEN) is not None:
            tokenizer.eos_token = EOS_TOKEN
        return tokenizer
    if path.is_dir():
        if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            raise FileNotFoundError(f"{path} holds no tokenizer files (tokenizer.json or tokenizer_config.json)")
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    raise FileNotFoundError(f"tokenizer {spec} not found: give a tokenizer.json file or a Hugging Face folder")


def find_tokenizer(model_dir: Path | str, explicit: Path | str | None = None):
    """The tokenizer of a saved model: `explicit` (a tokenizer.json or a folder) when given, else the one in the
    model folder, else the one in its parent (a run directory keeps it beside model/)."""
    if explicit:
        return load_tokenizer(explicit)
    model_dir = Path(model_dir)
    for candidate in (model_dir, model_dir.parent):
        if (candidate / "tokenizer_config.json").is_file():
            return load_tokenizer(candidate)
        if (candidate / "tokenizer.json").is_file():
            return load_tokenizer(candidate / "tokenizer.json")
    raise FileNotFoundError(f"no tokenizer next to {model_dir}; pass --tokenizer")


def document_separator_id(tokenizer) -> int:
    """The token that ends every document in packed data: `<|endoftext|>` if the vocabulary has it (true for ours,
    GPT-2, SmolLM2 and Qwen2), else the tokenizer's eos token."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    token_id = backend.token_to_id(EOS_TOKEN)
    if token_id is None:
        token_id = getattr(tokenizer, "eos_token_id", None)
    if token_id is None:
        raise ValueError(f"the tokenizer has neither {EOS_TOKEN} nor an eos token to separate documents")
    return int(token_id)


def backend_of(tokenizer) -> Tokenizer:
    """The fast `tokenizers.Tokenizer` behind a transformers tokenizer (or the argument itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)
