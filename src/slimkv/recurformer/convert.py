"""Select KV units by recency ratio and convert a pretrained Llama/Qwen2/Mistral model into a RecurFormer model.

Selection (shared/spec/recurformer.md): units = KV groups; rank them globally by RR (mean of their query heads),
replace a fraction `ratio` (or every unit with RR >= `threshold`), keeping at least one attention unit per layer.
Initialisation: `zero` (branch output projection zero: step 0 equals pruning those heads) or `attention`
(mamba2 only: C <- W_q rows of the replaced heads, B <- W_k, x <- W_v of their KV group, identity conv, no D,
decay horizons spread over 8..64 tokens, identity output projection).
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import torch
from torch import nn

from ..io import check_output_folder, output_folder
from .families import attention_geometry, check_family
from .modeling import RecurFormerConfig, RecurFormerForCausalLM

CACHE_LENGTHS = (1024, 4096, 16384)


def select_units(unit_scores, ratio: float | None = None, threshold: float | None = None,
                 strategy: str = "recency", seed: int = 0, allow_empty_layers: bool = False) -> list[list[int]]:
    """Which units of each layer to replace. unit_scores [L][U] (RR per unit). Returns sorted unit lists per layer."""
    if (ratio is None) == (threshold is None):
        raise ValueError("give exactly one of ratio and threshold")
    if ratio is not None and not (0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1) (a fraction of KV units to replace); got {ratio}")
    if strategy not in ("recency", "random"):
        raise ValueError(f"unknown selection strategy {strategy!r}; choose recency or random")
    num_layers, num_units = len(unit_scores), len(unit_scores[0])
    wants_any = (ratio or 0) > 0 or threshold is not None
    if num_units == 1 and wants_any and not allow_empty_layers:
        raise ValueError(
            "every layer of this model has a single KV unit: replacing it would remove all attention of that layer "
            "(the model would become purely recurrent there); pass --allow-empty-layers to do it anyway"
        )
    min_kept = 0 if allow_empty_layers else 1
    flat = [(unit_scores[l][u], l, u) for l in range(num_layers) for u in range(num_units)]
    if ratio is not None:
        target = int(round(ratio * len(flat)))
    else:
        target = sum(1 for s, _, _ in flat if s >= threshold)
    if strategy == "recency":
        ranked = sorted(flat, key=lambda t: (-t[0], t[1], t[2]))
        if threshold is not None:
            ranked = [t for t in ranked if t[0] >= threshold]
    else:
        ranked = list(flat)
        random.Random(seed).shuffle(ranked)
    chosen = [[] for _ in range(num_layers)]
    count = 0
    for _, layer, unit in ranked:
        if count >= target:
            break
        if num_units - len(chosen[layer]) - 1 >= min_kept:
            chosen[layer].append(unit)
            count += 1
    return [sorted(units) for units in chosen]


def _copy_rows(dst: nn.Linear, src: nn.Linear, rows: list[int]) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight[rows])
        if dst.bias is not None:
            dst.bias.copy_(src.bias[rows] if src.bias is not None else torch.zeros_like(dst.bias))


def _rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


@torch.no_grad()
def _init_mamba2_from_attention(branch, src_attn, layer_attn, geo) -> None:
    D = geo.head_dim
    heads, units = layer_attn.replaced_heads, layer_attn.replaced_units
    _copy_rows(branch.c_proj, src_attn.q_proj, _rows(heads, D))
    _copy_rows(branch.b_proj, src_attn.k_proj, _rows(units, D))
    _copy_rows(branch.x_proj, src_attn.v_proj, _rows([geo.unit_of_head(h) for h in heads], D))
    branch.conv_weight.zero_()
    branch.conv_weight[:, -1] = 1.0
    branch.conv_bias.zero_()
    branch.dt_proj.weight.zero_()
    # dt = softplus(dt_bias) = 1; per-step decay exp(-A) with horizons 1/A spread geometrically over 8..64 tokens
    branch.dt_bias.fill_(math.log(math.e - 1.0))
    horizons = torch.logspace(math.log10(8.0), math.log10(64.0), len(heads))
    branch.A_log.copy_((1.0 / horizons).log())
    branch.D.zero_()
    branch.norm_weight.fill_(1.0)
    branch.out_proj.weight.copy_(torch.eye(branch.out_proj.weight.shape[0]))


@torch.no_grad()
def _init_ddts(branch) -> None:
    from ..layers.ddts import ddts_gate_bias_init

    for module in branch.modules():
        gain = getattr(module, "_init_xavier_gain", None)
        if gain is not None:
            nn.init.xavier_uniform_(module.weight, gain=gain)
            if module.bias is not None:
                module.bias.zero_()
    branch.gate_proj.bias.copy_(ddts_gate_bias_init(branch.mem_size))


@torch.no_grad()
def build_converted(source_model, replaced_units: list[list[int]], mixer: str = "mamba2", init: str = "zero",
                    mixer_kwargs: dict | None = None, seed: int = 0) -> RecurFormerForCausalLM:
    """A RecurFormerForCausalLM holding `source_model`'s weights, with `replaced_units[layer]` given to branches."""
    config = source_model.config
    check_family(config)
    geo = attention_geometry(config)
    if init not in ("zero", "attention"):
        raise ValueError(f"unknown init {init!r}; choose zero or attention")
    if init == "attention" and mixer == "ddts":
        raise ValueError("--init attention is implemented for --mixer mamba2 (DDTS reads q/k from its own conv "
                         "features, so W_q/W_k have no slot to go into); use --init zero with ddts")
    kwargs = dict(mixer_kwargs or {})
    if mixer == "mamba2" and init == "attention":
        # W_q/W_k/W_v must reach C/B/x unchanged: identity conv without activation
        kwargs["conv_activation"] = False
    torch.manual_seed(seed)
    new_config = RecurFormerConfig(base_config=config.to_dict(), replaced_units=replaced_units, mixer=mixer,
                                   mixer_kwargs=kwargs)
    from transformers.initialization import no_init_weights

    # skip the random init of ~all weights (they are copied below); only the new branch weights get one
    with no_init_weights():
        model = RecurFormerForCausalLM(new_config)
    std = getattr(config, "initializer_range", 0.02)
    for layer in model.model.layers:
        branch = layer.self_attn.branch
        if branch is None:
            continue
        for module in branch.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
        if mixer == "mamba2":
            branch.reset_ssm_parameters()
    model = model.to(next(source_model.parameters()).dtype)
    src_layers = source_model.model.layers
    for idx, layer in enumerate(model.model.layers):
        src, attn = src_layers[idx], layer.self_attn
        layer.input_layernorm.load_state_dict(src.input_layernorm.state_dict())
        layer.post_attention_layernorm.load_state_dict(src.post_attention_layernorm.state_dict())
        layer.mlp.load_state_dict(src.mlp.state_dict())
        attn.o_proj.load_state_dict(src.self_attn.o_proj.state_dict())
        if attn.kept_units:
            _copy_rows(attn.q_proj, src.self_attn.q_proj, _rows(attn.kept_heads, geo.head_dim))
            _copy_rows(attn.k_proj, src.self_attn.k_proj, _rows(attn.kept_units, geo.head_dim))
            _copy_rows(attn.v_proj, src.self_attn.v_proj, _rows(attn.kept_units, geo.head_dim))
        if attn.branch is None:
            continue
        if mixer == "window":
            _copy_rows(attn.branch.q_proj, src.self_attn.q_proj, _rows(attn.replaced_heads, geo.head_dim))
            _copy_rows(attn.branch.k_proj, src.self_attn.k_proj, _rows(attn.replaced_units, geo.head_dim))
            _copy_rows(attn.branch.v_proj, src.self_attn.v_proj, _rows(attn.replaced_units, geo.head_dim))
            continue
        if mixer == "ddts":
            _init_ddts(attn.branch)
        if init == "attention":
            _init_mamba2_from_attention(attn.branch, src.self_attn, attn, geo)
        else:
            attn.branch.out_proj.weight.zero_()
    model.model.embed_tokens.load_state_dict(source_model.model.embed_tokens.state_dict())
    model.model.norm.load_state_dict(source_model.model.norm.state_dict())
    model.lm_head.weight.copy_(source_model.lm_head.weight)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = source_model.generation_config
    return model.eval()


def branch_state_bytes(model: RecurFormerForCausalLM, batch_size: int = 1) -> int:
    """Constant bytes of all branches' states for one batch (conv in the model dtype, scan state float32)."""
    value_bytes = next(model.parameters()).element_size()
    total = 0
    for layer in model.model.layers:
        attn = layer.self_attn
        if attn.branch is None:
            continue
        if attn.mixer == "window":
            slots = attn.branch.sinks + attn.branch.window + 1
            total += 2 * slots * attn.branch.num_kv_heads * attn.geo.head_dim * value_bytes * batch_size
            continue
        shapes = attn.branch.state_shapes(batch_size)
        total += math.prod(shapes["conv_state"]) * value_bytes + math.prod(shapes["ssm_state"]) * 4
    return total


def cache_bytes(model, seq_len: int, batch_size: int = 1) -> int:
    """Counted decode-cache bytes after `seq_len` tokens: KV of attention units plus constant branch state."""
    value_bytes = next(model.parameters()).element_size()
    geo = attention_geometry(model.config.source_config() if isinstance(model, RecurFormerForCausalLM)
                             else model.config)
    if not isinstance(model, RecurFormerForCausalLM):
        return 2 * geo.num_kv_heads * geo.head_dim * seq_len * value_bytes * geo.num_layers * batch_size
    kept = sum(len(layer.self_attn.kept_units) for layer in model.model.layers)
    kv = 2 * kept * geo.head_dim * seq_len * value_bytes * batch_size
    return kv + branch_state_bytes(model, batch_size)


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


def conversion_record(source_path, converted, scores, replaced, args_dict, source_model) -> dict:
    geo = attention_geometry(source_model.config)
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    branch_params = sum(n_params(l.self_attn.branch) for l in converted.model.layers if l.self_attn.branch)
    return {
        "source": str(source_path),
        "family": source_model.config.model_type,
        **args_dict,
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


def convert_cli(args) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .profile import RecencyProfile, calibration_batches, profile_model
    from .text import load_text

    if not Path(args.model, "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {args.model} (config.json missing)")
    # refuse a protected --out now, not after the profile and the conversion
    guard = dict(command="recurformer convert", overwrite=getattr(args, "overwrite", False), sources=(args.model,))
    check_output_folder(args.out, **guard)
    config = AutoConfig.from_pretrained(args.model)
    check_family(config)
    if args.ratio is not None and not (0.0 <= args.ratio < 1.0):
        raise ValueError(f"--ratio must be in [0, 1) (a fraction of KV units to replace); got {args.ratio}")
    geo = attention_geometry(config)
    if geo.num_kv_heads == 1 and not args.allow_empty_layers and (args.threshold is not None or args.ratio):
        select_units([[1.0]] * geo.num_layers, args.ratio, args.threshold)  # raises the explained error
    source = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.profile:
        profile = RecencyProfile.from_json(json.loads(Path(args.profile).read_text()))
        if (profile.num_layers, profile.num_kv_heads) != (geo.num_layers, geo.num_kv_heads):
            raise ValueError(f"{args.profile} profiles a different model ({profile.num_layers} layers x "
                             f"{profile.num_kv_heads} units; this one has {geo.num_layers} x {geo.num_kv_heads})")
        if args.window not in profile.unit_rr:
            raise ValueError(f"{args.profile} has no scores for window {args.window}; it has {profile.windows}")
    else:
        text, _ = load_text(args.data, "train")
        ids = calibration_batches(tokenizer, text, args.num_sequences, args.seq_len, args.window)
        profile = profile_model(source, ids, window=args.window, name=Path(args.model).name)
    scores = profile.unit_rr[args.window]
    replaced = select_units(scores, args.ratio, args.threshold, args.select, args.seed, args.allow_empty_layers)
    mixer_kwargs = {"state_size": args.state_size} if args.mixer == "mamba2" else {}
    if args.mixer == "window":
        mixer_kwargs = {"window": args.attn_window, "sinks": args.attn_sinks}
    converted = build_converted(source, replaced, args.mixer, args.init, mixer_kwargs, args.seed)
    record = conversion_record(args.model, converted, scores, replaced, {
        "mixer": args.mixer, "init": args.init if args.mixer != "window" else "pretrained",
        "select": args.select, "seed": args.seed, "ratio": args.ratio, "threshold": args.threshold,
        "window_k": args.window, "mixer_kwargs": mixer_kwargs,
    }, source)
    save_converted(converted, tokenizer, args.out, record, **guard)
    c4k = record["cache_bytes"]["4096"]
    print(f"replaced {record['num_replaced']}/{record['num_units']} KV units with {args.mixer} branches; "
          f"cache at 4K tokens {c4k['original'] / 2**20:.1f} MiB -> {c4k['converted'] / 2**20:.1f} MiB "
          f"({100 * c4k['saved_fraction']:.1f}% saved); wrote {args.out}")
    return 0
