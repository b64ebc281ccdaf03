"""Convert a pretrained Llama / Qwen2 / Mistral model into a RecurFormer model, and count what its cache costs.

    conversion = convert(RecurFormerConvertConfig(model=source, out="runs/rf/mamba2", ratio=0.5))
    model = build_converted(source_model, replaced_units, mixer="mamba2", init="zero")

Every pretrained tensor is copied bit for bit (kept q/k/v rows as row slices, o_proj, norms, MLPs, embeddings);
each branch initialises itself from the replaced heads' rows (layers/branches.py `init_from_heads`): `zero` makes
its output projection zero, so step 0 equals the source with those heads pruned; `attention` reuses W_q / W_k / W_v
where the branch has a slot for them (mamba2); the window branch keeps the rows as they are.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, get_args

import torch
from torch import nn

from ..config import check_ranges, did_you_mean, ranged, setting
from ..io import output_folder
from ..layers.branches import ReplacedHeads, branch_class
from ..models.recurformer import RecurFormerConfig, RecurFormerForCausalLM, attention_geometry, check_family
from .select import Strategy, fraction_field

CACHE_LENGTHS = (1024, 4096, 16384)
Init = Literal["zero", "attention"]
INITS: tuple[str, ...] = get_args(Init)


def _rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def _slice(linear: nn.Linear, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    return linear.weight[rows], None if linear.bias is None else linear.bias[rows]


@torch.no_grad()
def build_converted(source_model, replaced_units: list[list[int]], mixer: str = "mamba2", init: str = "zero",
                    mixer_kwargs: dict | None = None, seed: int = 0) -> RecurFormerForCausalLM:
    """A RecurFormerForCausalLM holding `source_model`'s weights, with `replaced_units[layer]` given to branches."""
    from transformers.initialization import no_init_weights

    config = source_model.config
    check_family(config)
    geo = attention_geometry(config)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    kwargs = dict(mixer_kwargs or {})
    if mixer == "mamba2" and init == "attention":
        # W_q/W_k/W_v must reach C/B/x unchanged: identity conv without activation
        kwargs["conv_activation"] = False
    if mixer == "ddts" and init == "attention":
        branch_class(mixer)  # unknown names fail first
        raise ValueError("--init attention is implemented for --mixer mamba2 (DDTS reads q/k from its own conv "
                         "features, so W_q/W_k have no slot to go into); use --init zero with ddts")
    torch.manual_seed(seed)
    new_config = RecurFormerConfig(base_config=config.to_dict(), replaced_units=replaced_units, mixer=mixer,
                                   mixer_kwargs=kwargs)
    # skip the random init of ~all weights (they are copied below); the branches initialise themselves
    with no_init_weights():
        model = RecurFormerForCausalLM(new_config)
    std = getattr(config, "initializer_range", 0.02)
    model = model.to(next(source_model.parameters()).dtype)
    D = geo.head_dim
    for src, layer in zip(source_model.model.layers, model.model.layers):
        attn, src_attn = layer.self_attn, src.self_attn
        for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
            getattr(layer, name).load_state_dict(getattr(src, name).state_dict())
        attn.o_proj.load_state_dict(src_attn.o_proj.state_dict())
        for name, rows in (("q_proj", _rows(attn.kept_heads, D)), ("k_proj", _rows(attn.kept_units, D)),
                           ("v_proj", _rows(attn.kept_units, D))):
            if attn.kept_units:
                weight, bias = _slice(getattr(src_attn, name), rows)
                getattr(attn, name).weight.copy_(weight)
                if bias is not None:
                    getattr(attn, name).bias.copy_(bias)
        if attn.branch is not None:
            (q_w, q_b), (k_w, k_b), (v_w, v_b) = (
                _slice(src_attn.q_proj, _rows(attn.replaced_heads, D)),
                _slice(src_attn.k_proj, _rows(attn.replaced_units, D)),
                _slice(src_attn.v_proj, _rows(attn.replaced_units, D)))
            attn.branch.init_from_heads(ReplacedHeads(q_w, k_w, v_w, q_b, k_b, v_b, std), init)
    model.model.embed_tokens.load_state_dict(source_model.model.embed_tokens.state_dict())
    model.model.norm.load_state_dict(source_model.model.norm.state_dict())
    model.lm_head.weight.copy_(source_model.lm_head.weight)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = source_model.generation_config
    return model.eval()


def cache_bytes(model, seq_len: int, batch_size: int = 1, dtype: torch.dtype | None = None) -> int:
    """Decode-cache bytes after `seq_len` tokens, counted from the geometry: a source model holds K and V of every
    KV head, 2 x layers x KV heads x head dim x T values; a converted one K, V and a validity flag of its kept units
    at T slots (the source's window, if it has one) plus every branch's constant state. Tests check the count
    against the live cache."""
    dtype = dtype or next(model.parameters()).dtype
    value_bytes = torch.empty((), dtype=dtype).element_size()
    if not isinstance(model, RecurFormerForCausalLM):
        geo = attention_geometry(model.config)
        return 2 * geo.num_kv_heads * geo.head_dim * seq_len * value_bytes * geo.num_layers * batch_size
    total = 0
    for layer in model.model.layers:
        attn = layer.self_attn
        if attn.kept_units:
            total += attn.kv_slots(seq_len) * (2 * len(attn.kept_units) * attn.geo.head_dim * value_bytes + 1)
    return total * batch_size + branch_state_bytes(model, batch_size, dtype)


def branch_state_bytes(model: RecurFormerForCausalLM, batch_size: int = 1, dtype: torch.dtype | None = None) -> int:
    """The part of `cache_bytes` that never grows: every branch's state (scan states in float32)."""
    from ..models.cache import state_dtype

    dtype = dtype or next(model.parameters()).dtype
    total = 0
    for layer in model.model.layers:
        if layer.self_attn.branch is not None:
            for name, shape in layer.self_attn.branch.state_shapes(batch_size).items():
                total += math.prod(shape) * torch.empty((), dtype=state_dtype(name, dtype)).element_size()
    return total


def cache_report(source_model, converted, lengths=CACHE_LENGTHS) -> dict:
    report = {}
    for T in lengths:
        full, conv = cache_bytes(source_model, T), cache_bytes(converted, T)
        report[str(T)] = {"original": full, "converted": conv, "saved_fraction": round(1 - conv / full, 4)}
    return report


def save_converted(model, tokenizer, out_dir: str | os.PathLike, conversion: dict | None, *,
                   command: str = "recurformer convert", overwrite: bool = False,
                   sources: tuple[str | os.PathLike, ...] = (), extra_json: dict[str, dict] | None = None) -> Path:
    """save_pretrained (safetensors) + tokenizer + conversion.json (+ `extra_json` files), built beside `out_dir`
    and swapped into place when complete; `out_dir` is guarded as `slimkv.io.output_folder` describes."""
    with output_folder(out_dir, command=command, overwrite=overwrite, sources=sources) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        records = dict(extra_json or {})
        if conversion is not None:
            records["conversion.json"] = conversion
        for name, record in records.items():
            (tmp / name).write_text(json.dumps(record, indent=1) + "\n")
    return Path(out_dir)


def conversion_record(source_path, converted, scores, replaced, settings: dict, source_model) -> dict:
    """What conversion.json holds: source, settings, replaced units with their scores, cache bytes, parameters."""
    geo = attention_geometry(source_model.config)
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    branch_params = sum(n_params(l.self_attn.branch) for l in converted.model.layers if l.self_attn.branch)
    return {
        "source": str(source_path),
        "family": source_model.config.model_type,
        **settings,
        "num_units": geo.num_layers * geo.num_kv_heads,
        "num_replaced": sum(len(u) for u in replaced),
        "replaced": [
            {"layer": l, "unit": u, "score": round(scores[l][u], 5), "query_heads": geo.heads_of_unit(u)}
            for l, units in enumerate(replaced) for u in units
        ],
        "kept_units_per_layer": [geo.num_kv_heads - len(u) for u in replaced],
        "unit_scores": [[round(s, 5) for s in row] for row in scores],
        "cache_bytes": cache_report(source_model, converted),
        "params": {"original": n_params(source_model), "converted": n_params(converted), "branches": branch_params},
    }


@dataclass
class RecurFormerConvertConfig:
    """`slimkv recurformer convert`: which KV units of a pretrained model to replace, and with what (`convert`)."""

    # HF model folder of the Llama, Qwen2 or Mistral family
    model: str = setting(metavar="DIR")
    # output folder (loads with from_pretrained after `import slimkv`): new, empty, or an earlier output of this
    # command
    out: str = setting(metavar="DIR")
    # replace a non-empty --out this command did not write (only once the new output is complete)
    overwrite: bool = False
    # fraction of KV units to replace (give exactly one of --ratio and --threshold)
    ratio: Optional[float] = fraction_field()
    # replace every unit with score >= this (give exactly one of --ratio and --threshold)
    threshold: Optional[float] = None
    # the branch that replaces the units (registry in layers/branches.py: mamba2, ddts, window, window_mamba2)
    mixer: str = "mamba2"
    # zero: branch output projection zero (= pruning at step 0); attention: reuse W_q/W_k/W_v (mamba2)
    init: Init = "zero"
    # rank units by recency ratio or by learned gates (--gates), or pick them at random
    select: Strategy = "recency"
    # --select learned: the gates.json of a `recurformer train` stage-gates run
    gates: Optional[str] = setting(None, metavar="FILE")
    # seed for --select random and the new weights
    seed: int = ranged(0, ge=0)
    # a profile JSON from `slimkv recurformer profile` (none: one is computed on the calibration text)
    profile: Optional[str] = setting(None, metavar="FILE")
    # calibration text when no --profile is given (none: the corpus train split)
    data: Optional[str] = setting(None, metavar="FILE")
    # k of the recency ratio used for ranking
    window: int = ranged(32, ge=1)
    # calibration sequences when no --profile is given
    num_sequences: int = ranged(16, ge=1)
    # tokens per calibration sequence
    seq_len: int = ranged(512, ge=2)
    # --mixer window / window_mamba2: previous tokens each replaced head sees (in full; older ones through the state)
    attn_window: int = ranged(64, ge=1)
    # --mixer window / window_mamba2: first tokens always visible (sinks)
    attn_sinks: int = ranged(4, ge=0)
    # --mixer mamba2 / window_mamba2 / ddts: state size N per replaced head (none: the head dim; ddts: its n, 64)
    state_size: Optional[int] = ranged(None, ge=1)
    # allow replacing every KV unit of a layer (models with one KV head per layer)
    allow_empty_layers: bool = False

    def mixer_kwargs(self) -> dict:
        """The options of the --mixer branch that this config sets: those its constructor takes."""
        from ..layers.branches import branch_option_names

        offered = {"window": self.attn_window, "sinks": self.attn_sinks}
        if self.state_size:
            offered["state_size"] = self.state_size
        accepted = branch_option_names(self.mixer)
        return {key: value for key, value in offered.items() if key in accepted}


@dataclass
class Conversion:
    """What `convert` wrote: the folder and its conversion.json record."""

    folder: Path
    record: dict

    def summary(self) -> str:
        c4k = self.record["cache_bytes"]["4096"]
        return (f"replaced {self.record['num_replaced']}/{self.record['num_units']} KV units with "
                f"{self.record['mixer']} branches; cache at 4K tokens {c4k['original'] / 2**20:.1f} MiB -> "
                f"{c4k['converted'] / 2**20:.1f} MiB ({100 * c4k['saved_fraction']:.1f}% saved); wrote {self.folder}")


def check_convert_config(config: RecurFormerConvertConfig) -> None:
    """Ranges, then the rules across fields (one line each, naming the options)."""
    from ..layers.branches import branch_names

    check_ranges(config)
    if (config.ratio is None) == (config.threshold is None):
        raise ValueError("give exactly one of --ratio and --threshold")
    if config.mixer not in branch_names():
        raise ValueError(f"--mixer must be one of {list(branch_names())}, got {config.mixer!r}"
                         + did_you_mean(config.mixer, branch_names()))
    if config.select == "learned" and not config.gates:
        raise ValueError("--select learned ranks units by trained gates: pass --gates <run>/model/gates.json")


def convert(config: RecurFormerConvertConfig, progress: bool = True) -> Conversion:
    """`slimkv recurformer convert`: score the units (a profile JSON, gates.json, or a fresh recency profile on
    calibration text), select, build, save to `config.out` with conversion.json."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..io import check_output_folder
    from .profile import RecencyProfile, calibration_batches, profile_model
    from .select import learned_scores, select_units

    check_convert_config(config)
    model, ratio, threshold, window = config.model, config.ratio, config.threshold, config.window
    if not Path(model, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {model} (config.json missing)")
    # refuse a protected `out` now, not after the profile and the conversion
    guard = dict(command="recurformer convert", overwrite=config.overwrite, sources=(model,))
    check_output_folder(config.out, **guard)
    source_config = AutoConfig.from_pretrained(model)
    check_family(source_config)
    geo = attention_geometry(source_config)
    if geo.num_kv_heads == 1 and not config.allow_empty_layers and (threshold is not None or ratio):
        select_units([[1.0]] * geo.num_layers, ratio, threshold)  # raises the explained error
    source = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    if config.select == "learned":
        scores = learned_scores(config.gates, geo.num_layers, geo.num_kv_heads)
    elif config.profile:
        found = RecencyProfile.from_json(json.loads(Path(config.profile).read_text()))
        if (found.num_layers, found.num_kv_heads) != (geo.num_layers, geo.num_kv_heads):
            raise ValueError(f"{config.profile} profiles a different model ({found.num_layers} layers x "
                             f"{found.num_kv_heads} units; this one has {geo.num_layers} x {geo.num_kv_heads})")
        if window not in found.unit_rr:
            raise ValueError(f"{config.profile} has no scores for window {window}; it has {found.windows}")
        scores = found.unit_rr[window]
    else:
        from .data import calibration_text

        text, _ = calibration_text(config.data)
        ids = calibration_batches(tokenizer, text, config.num_sequences, config.seq_len, window)
        scores = profile_model(source, ids, window=window, name=Path(model).name, progress=progress).unit_rr[window]
    replaced = select_units(scores, ratio, threshold, config.select, config.seed, config.allow_empty_layers)
    kwargs = config.mixer_kwargs()
    converted = build_converted(source, replaced, config.mixer, config.init, kwargs, config.seed)
    record = conversion_record(model, converted, scores, replaced, {
        "mixer": config.mixer, "init": "pretrained" if branch_class(config.mixer).pretrained else config.init,
        "select": config.select, "seed": config.seed, "ratio": ratio, "threshold": threshold, "window_k": window,
        "gates": config.gates, "mixer_kwargs": kwargs,
    }, source)
    folder = save_converted(converted, tokenizer, config.out, record, **guard)
    return Conversion(folder, record)
