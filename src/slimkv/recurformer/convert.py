"""Convert a pretrained Llama / Qwen2 / Mistral model into a RecurFormer model, and count what its cache costs.

    model = build_converted(source, replaced_units, mixer="mamba2", init="zero")

Every pretrained tensor is copied bit for bit (kept q/k/v rows as row slices, o_proj, norms, MLPs, embeddings);
each branch initialises itself from the replaced heads' rows (layers/branches.py `init_from_heads`): `zero` makes
its output projection zero, so step 0 equals the source with those heads pruned; `attention` reuses W_q / W_k / W_v
where the branch has a slot for them (mamba2); the window branch keeps the rows as they are.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..io import output_folder
from ..layers.branches import ReplacedHeads, branch_class
from ..models.recurformer import RecurFormerConfig, RecurFormerForCausalLM, attention_geometry, check_family

CACHE_LENGTHS = (1024, 4096, 16384)
INITS = ("zero", "attention")


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


def convert_folder(model: str | os.PathLike, out: str | os.PathLike, *, ratio: float | None = None,
                   threshold: float | None = None, mixer: str = "mamba2", init: str = "zero",
                   select: str = "recency", seed: int = 0, profile: str | None = None, gates: str | None = None,
                   data: str | None = None, window: int = 32, num_sequences: int = 16, seq_len: int = 512,
                   mixer_kwargs: dict | None = None, allow_empty_layers: bool = False, overwrite: bool = False,
                   progress: bool = True) -> dict:
    """`slimkv recurformer convert`: score the units (a profile JSON, gates.json, or a fresh recency profile on
    calibration text), select, build, save to `out` with conversion.json; returns that record."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..io import check_output_folder
    from .profile import RecencyProfile, calibration_batches, profile_model
    from .select import learned_scores, select_units

    if not Path(model, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {model} (config.json missing)")
    # refuse a protected `out` now, not after the profile and the conversion
    guard = dict(command="recurformer convert", overwrite=overwrite, sources=(model,))
    check_output_folder(out, **guard)
    config = AutoConfig.from_pretrained(model)
    check_family(config)
    if ratio is not None and not (0.0 <= ratio < 1.0):
        raise ValueError(f"--ratio must be in [0, 1) (a fraction of KV units to replace); got {ratio}")
    branch_class(mixer)
    geo = attention_geometry(config)
    if geo.num_kv_heads == 1 and not allow_empty_layers and (threshold is not None or ratio):
        select_units([[1.0]] * geo.num_layers, ratio, threshold)  # raises the explained error
    if select == "learned" and not gates:
        raise ValueError("--select learned ranks units by trained gates: pass --gates <run>/model/gates.json")
    source = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    if select == "learned":
        scores = learned_scores(gates, geo.num_layers, geo.num_kv_heads)
    elif profile:
        found = RecencyProfile.from_json(json.loads(Path(profile).read_text()))
        if (found.num_layers, found.num_kv_heads) != (geo.num_layers, geo.num_kv_heads):
            raise ValueError(f"{profile} profiles a different model ({found.num_layers} layers x "
                             f"{found.num_kv_heads} units; this one has {geo.num_layers} x {geo.num_kv_heads})")
        if window not in found.unit_rr:
            raise ValueError(f"{profile} has no scores for window {window}; it has {found.windows}")
        scores = found.unit_rr[window]
    else:
        from .data import calibration_text

        text, _ = calibration_text(data)
        ids = calibration_batches(tokenizer, text, num_sequences, seq_len, window)
        scores = profile_model(source, ids, window=window, name=Path(model).name, progress=progress).unit_rr[window]
    replaced = select_units(scores, ratio, threshold, select, seed, allow_empty_layers)
    kwargs = dict(mixer_kwargs or {})
    converted = build_converted(source, replaced, mixer, init, kwargs, seed)
    record = conversion_record(model, converted, scores, replaced, {
        "mixer": mixer, "init": "pretrained" if branch_class(mixer).pretrained else init, "select": select,
        "seed": seed, "ratio": ratio, "threshold": threshold, "window_k": window, "gates": gates,
        "mixer_kwargs": kwargs,
    }, source)
    save_converted(converted, tokenizer, out, record, **guard)
    return record
