"""A model from an architecture name and its options: the one place that knows each arch's config and model class.

    config = model_config("rodimus_plus", vocab_size=8192, num_hidden_layers=2, options={"hidden_size": 256})
    model = build_model("rodimus_plus", config)                  # RodimusForCausalLM (LlamaForCausalLM for llama)

Archs: every block type of RodimusConfig (models/configuration.py `BLOCK_TYPES`: a block type added there is an
arch here with no other change) and `llama`, a Hugging Face Llama matched to the same sizes (the Transformer
baseline; its heads default to d / 64, its FFN to 8/3 d rounded up to a multiple of 64).

Options are RodimusConfig's keyword arguments (`rodimus_options()`: names, types and defaults read from its
signature, so a new RodimusConfig option is settable everywhere at once), plus the baseline's
`num_key_value_heads` and `intermediate_size`. One set of options serves every arch (a preset switches arch with
one flag): each builder takes the options its config knows. `extra` goes to the config unchecked.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, get_type_hints

from torch import nn

from .configuration import BLOCK_TYPES, RodimusConfig

# set by the run (its data and layer plan), not by the model options
RUN_LEVEL = ("vocab_size", "num_hidden_layers", "block_type")
# set when a model is exported (models carry them from their tokenizer), never by a run config
EXPORT_LEVEL = ("use_cache", "bos_token_id", "eos_token_id", "pad_token_id")
# the Transformer baseline's own knobs (None: derived from hidden_size as documented above)
BASELINE_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "num_key_value_heads": (int | None, None, "llama: key/value heads (none = num_heads, plain multi-head attention)"),
    "intermediate_size": (int | None, None, "llama: FFN width (none = 8/3 d rounded up to a multiple of 64)"),
}
# Hugging Face names RodimusConfig's docstring leaves undocumented
_COMMON_DOCS = {
    "rms_norm_eps": "epsilon of every RMSNorm",
    "initializer_range": "std of the normal init of linear and embedding weights",
    "max_position_embeddings": "position limit; training seq_len and evaluation windows must not exceed it",
    "residual_in_fp32": "keep the residual stream in float32 under autocast",
    "tie_word_embeddings": "share the embedding with the LM head",
}


# the allowed values of the sizes and rates, checked by the run config with the field named before anything runs
# (RodimusConfig checks its own on construction; the run config checks them for every arch, the baseline's too)
OPTION_RANGES: dict[str, dict[str, Any]] = {
    "hidden_size": {"ge": 1}, "mem_size": {"ge": 1}, "expand_ratio": {"gt": 0}, "conv_size": {"ge": 1},
    "num_heads": {"ge": 1}, "window_size": {"ge": 2, "even": True}, "ffn_expand_ratio": {"gt": 0},
    "rope_theta": {"gt": 0}, "rms_norm_eps": {"gt": 0}, "normalize_epsilon": {"gt": 0},
    "initializer_range": {"ge": 0}, "max_position_embeddings": {"ge": 1},
    "num_key_value_heads": {"ge": 1}, "intermediate_size": {"ge": 1},
}


@dataclass(frozen=True)
class Option:
    name: str
    type: Any
    default: Any
    doc: str

    @property
    def range(self) -> dict[str, Any]:
        return OPTION_RANGES.get(self.name, {})


def _docstring_args(cls: type) -> dict[str, str]:
    """name -> text from a docstring's `Args:` block written as "name: text.  other, names: text." entries."""
    doc = inspect.getdoc(cls) or ""
    block = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    starts = list(re.finditer(r"(?:^|(?<=\.)\s{2,}|\n\s*)([a-z_]+(?:(?:, | / )[a-z_]+)*): ", block))
    docs = {}
    for match, following in zip(starts, starts[1:] + [None]):
        text = block[match.end():following.start() if following else len(block)]
        text = " ".join(text.split())
        for name in re.split(r", | / ", match.group(1)):
            docs[name] = text
    return docs


@functools.lru_cache(maxsize=None)
def rodimus_options() -> tuple[Option, ...]:
    """Every RodimusConfig keyword argument a run may set, from its signature and docstring."""
    signature = inspect.signature(RodimusConfig.__init__)
    hints = get_type_hints(RodimusConfig.__init__)
    docs = {**_COMMON_DOCS, **_docstring_args(RodimusConfig)}
    options = []
    for name, param in signature.parameters.items():
        if name == "self" or param.kind is not param.POSITIONAL_OR_KEYWORD or name in RUN_LEVEL + EXPORT_LEVEL:
            continue
        options.append(Option(name, hints.get(name, Any), param.default, docs.get(name, "")))
    return tuple(options)


def model_options() -> tuple[Option, ...]:
    """What the `model` section of a run config may set besides arch and layers (train/config.py ModelConfig)."""
    return rodimus_options() + tuple(Option(n, t, d, doc) for n, (t, d, doc) in BASELINE_OPTIONS.items())


def llama_intermediate_size(hidden_size: int) -> int:
    # the Llama recipe: 8/3 d, rounded up to a multiple of 64
    return 64 * math.ceil(8 * hidden_size / 3 / 64)


def _rodimus_config(arch: str, vocab_size: int, num_hidden_layers: int, options: dict, extra: dict):
    known = {o.name for o in rodimus_options()}
    kwargs = {k: v for k, v in options.items() if k in known}
    return RodimusConfig(vocab_size=vocab_size, num_hidden_layers=num_hidden_layers, block_type=arch,
                         use_cache=True, **kwargs, **extra)


def _llama_config(arch: str, vocab_size: int, num_hidden_layers: int, options: dict, extra: dict):
    from transformers import LlamaConfig

    hidden = options.get("hidden_size", 1024)
    num_heads = options.get("num_heads") or max(1, hidden // 64)
    if hidden % num_heads:
        raise ValueError(f"config field 'model.num_heads' ({num_heads}) must divide 'model.hidden_size' ({hidden})")
    kv_heads = options.get("num_key_value_heads") or num_heads
    if num_heads % kv_heads:
        raise ValueError(f"config field 'model.num_key_value_heads' ({kv_heads}) must divide 'model.num_heads' "
                         f"({num_heads})")
    shared = {k: options[k] for k in ("max_position_embeddings", "tie_word_embeddings", "initializer_range")
              if k in options}
    # no special-token ids until export takes them from the tokenizer (train/hf_export.py): LlamaConfig's own
    # defaults (bos 1, eos 2) are Llama's tokenizer's and make transformers warn about an out-of-vocabulary eos
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_hidden_layers,
                       intermediate_size=options.get("intermediate_size") or llama_intermediate_size(hidden),
                       num_attention_heads=num_heads, num_key_value_heads=kv_heads, rms_norm_eps=1e-5,
                       use_cache=True, **{"bos_token_id": None, "eos_token_id": None, **shared, **extra})


def _llama_model(config):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(config)


def _rodimus_model(config):
    from .modeling import RodimusForCausalLM

    return RodimusForCausalLM(config)


# arch -> (config builder, model class builder); `register_arch` adds one (e.g. a RecurFormer family)
ConfigBuilder = Callable[[str, int, int, dict, dict], Any]
_ARCHS: dict[str, tuple[ConfigBuilder, Callable[[Any], nn.Module]]] = {
    **{block: (_rodimus_config, _rodimus_model) for block in BLOCK_TYPES},
    "llama": (_llama_config, _llama_model),
}


def register_arch(name: str, make_config: ConfigBuilder, make_model: Callable[[Any], nn.Module]) -> None:
    """Add an arch: `make_config(arch, vocab_size, num_hidden_layers, options, extra)` returns its Hugging Face
    config (taking the options it knows), `make_model(config)` the causal LM."""
    _ARCHS[name] = (make_config, make_model)


def archs() -> tuple[str, ...]:
    return tuple(_ARCHS)


def model_config(arch: str, *, vocab_size: int, num_hidden_layers: int, options: dict | None = None,
                 extra: dict | None = None):
    """The Hugging Face config of `arch` with these sizes and options; one-line ValueError for a bad value."""
    if arch not in _ARCHS:
        from ..config import did_you_mean

        raise ValueError(f"config field 'model.arch' is {arch!r}; known: {', '.join(_ARCHS)}"
                         f"{did_you_mean(arch, _ARCHS)}")
    make_config, _ = _ARCHS[arch]
    try:
        return make_config(arch, vocab_size, num_hidden_layers, dict(options or {}), dict(extra or {}))
    except TypeError as err:
        raise ValueError(f"model options of arch {arch!r} are not accepted: {err}") from None


def build_model(arch: str, config) -> nn.Module:
    """The causal LM of `arch` for a config `model_config` returned (on the current default device, float32)."""
    if arch not in _ARCHS:
        raise ValueError(f"config field 'model.arch' is {arch!r}; known: {', '.join(_ARCHS)}")
    return _ARCHS[arch][1](config)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameter counts (tied weights counted once): total, embedding, and non-embedding."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    embedding = 0
    get_input = getattr(model, "get_input_embeddings", None)
    if get_input is not None and get_input() is not None:
        embedding += get_input().weight.numel()
    get_output = getattr(model, "get_output_embeddings", None)
    if get_output is not None and get_output() is not None:
        head = get_output().weight
        if get_input is None or head is not get_input().weight:
            embedding += head.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
