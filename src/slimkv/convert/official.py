"""Official Rodimus checkpoints (codefuse-ai/rodimus layout, docs/rodimus.md section 5) <-> slimkv.

Every conversion is an explicit key map; loading never executes code from a checkpoint (weights_only=True,
safetensors). Outputs are built in a hidden sibling folder and swapped into place only when complete
(`slimkv.io.output_folder`): a non-empty destination that is not an earlier output of the same conversion is refused
unless `overwrite=True`, and the working folder, the source or a folder holding it never are destinations.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from safetensors.torch import load_file, save_file

from ..config import setting
from ..io import atomic_write_text, check_output_folder, output_folder
from ..models.configuration import BLOCK_TYPES, RodimusConfig

# official key -> slimkv key; "{}" is the layer index
MIXER_KEYS = {
    "model.layers.{}.mixer_norm.weight": "model.layers.{}.mixer_norm.weight",
    "model.layers.{}.mixer.fc.weight": "model.layers.{}.mixer.fc.weight",
    "model.layers.{}.mixer.act_norm.weight": "model.layers.{}.mixer.out_norm.weight",
    "model.layers.{}.mixer.out_proj.weight": "model.layers.{}.mixer.out_proj.weight",
    "model.layers.{}.mixer.inner_mixer.short_conv.conv1d.weight": "model.layers.{}.mixer.conv.weight",
    "model.layers.{}.mixer.inner_mixer.short_conv.conv1d.bias": "model.layers.{}.mixer.conv.bias",
    "model.layers.{}.mixer.inner_mixer.residual_weight": "model.layers.{}.mixer.D",
    "model.layers.{}.mixer.inner_mixer.in_proj.weight": "model.layers.{}.mixer.qk_proj.weight",
    "model.layers.{}.mixer.inner_mixer.ch_gate_proj.0.weight": "model.layers.{}.mixer.channel_gate.0.weight",
    "model.layers.{}.mixer.inner_mixer.ch_gate_proj.1.weight": "model.layers.{}.mixer.channel_gate.1.weight",
    "model.layers.{}.mixer.inner_mixer.ch_gate_proj.1.bias": "model.layers.{}.mixer.channel_gate.1.bias",
    "model.layers.{}.mixer.inner_mixer.mem_gate_proj.weight": "model.layers.{}.mixer.gate_proj.weight",
    "model.layers.{}.mixer.inner_mixer.mem_gate_proj.bias": "model.layers.{}.mixer.gate_proj.bias",
}
PLUS_KEYS = {
    "model.layers.{}.attn_norm.weight": "model.layers.{}.attn_norm.weight",
    "model.layers.{}.attn.q_proj.weight": "model.layers.{}.attn.q_proj.weight",
    "model.layers.{}.attn.k_proj.weight": "model.layers.{}.attn.k_proj.weight",
    "model.layers.{}.attn.v_proj.weight": "model.layers.{}.attn.v_proj.weight",
    "model.layers.{}.attn.out_proj.weight": "model.layers.{}.attn.o_proj.weight",
    "model.layers.{}.ffn_norm.weight": "model.layers.{}.ffn_norm.weight",
    "model.layers.{}.ffn.fc.weight": "model.layers.{}.ffn.fc.weight",
    "model.layers.{}.ffn.out_proj.weight": "model.layers.{}.ffn.down_proj.weight",
}
GLOBAL_KEYS = {
    "model.embeddings.weight": "model.embed_tokens.weight",
    "model.norm_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# inference buffers that official state dicts may carry; never weights
BUFFER_PATTERN = re.compile(r"(^|\.)(conv_state|ssm_state|key_cache|value_cache)_\d+$")
REQUIRED_CONFIG_KEYS = ("block_type", "d_model", "n_layer", "vocab_size")
# official config keys that slimkv maps onto its own fields (everything else is carried through unchanged)
MAPPED_CONFIG_KEYS = {"block_type", "d_model", "n_layer", "vocab_size", "norm_epsilon", "initializer_range",
                      "max_position_embeddings", "residual_in_fp32", "tie_word_embeddings", "bos_token_id",
                      "eos_token_id", "pad_token_id", "mixer_cfg", "attn_cfg", "model_type", "use_cache"}


def key_map(config: RodimusConfig) -> dict[str, str]:
    """Complete official -> slimkv key map for this config (lm_head only when untied)."""
    table = {k: v for k, v in GLOBAL_KEYS.items() if k != "lm_head.weight" or not config.tie_word_embeddings}
    per_layer = dict(MIXER_KEYS, **(PLUS_KEYS if config.block_type == "rodimus_plus" else {}))
    for i in range(config.num_hidden_layers):
        table.update({src.format(i): dst.format(i) for src, dst in per_layer.items()})
    return table


def config_from_official(cfg: dict) -> RodimusConfig:
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"official config.json lacks required key(s): {', '.join(missing)}")
    if cfg["block_type"] not in BLOCK_TYPES:
        raise ValueError(f"unknown block_type {cfg['block_type']!r} in config.json; expected one of {BLOCK_TYPES}")
    mix = cfg.get("mixer_cfg") or {}
    att = cfg.get("attn_cfg") or {}
    plus = cfg["block_type"] == "rodimus_plus"
    if plus:
        absent = [k for k in ("num_heads", "window_size") if k not in att]
        if absent:
            raise ValueError(f"rodimus_plus config.json lacks attn_cfg key(s): {', '.join(absent)}")
        for k in ("num_heads_k", "num_heads_v"):
            want = 1 if k == "num_heads_k" else att["num_heads"]
            if att.get(k, want) != want:
                raise ValueError(f"attn_cfg.{k}={att[k]} is not supported (SW-SKA needs {want})")
        rot = att.get("rotary_emb_dim", -1)
        if att.get("rotary_emb_scale_base") is not None:
            raise ValueError("attn_cfg.rotary_emb_scale_base (xPos) is not supported; the released checkpoints do not "
                             "use it")
    extra = {k: v for k, v in cfg.items() if k not in MAPPED_CONFIG_KEYS}
    return RodimusConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["d_model"],
        num_hidden_layers=cfg["n_layer"],
        block_type=cfg["block_type"],
        expand_ratio=mix.get("expand_ratio", 2),
        mem_size=mix.get("mem_size", 64),
        conv_size=mix.get("d_conv", 4),
        input_gate_low_rank=mix.get("input_gate_low_rank", "auto"),
        normalize_epsilon=mix.get("normalize_epsilon", 1e-12),
        num_heads=att.get("num_heads") if plus else None,
        window_size=att.get("window_size", 4096) if plus else 4096,
        ffn_expand_ratio=att.get("ffn_expand_ratio", 4 / 3) if plus else 4 / 3,
        rope_theta=(att.get("rotary_emb_base") or 10000.0) if plus else 10000.0,
        rotary_dim=(None if rot in (-1, None) else rot) if plus else None,
        rms_norm_eps=cfg.get("norm_epsilon", 1e-5),
        initializer_range=cfg.get("initializer_range", 0.02),
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        residual_in_fp32=cfg.get("residual_in_fp32", True),
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        official_mixer_cfg=mix,
        official_attn_cfg=att,
        official_extra=extra,
    )


def config_to_official(config: RodimusConfig) -> dict:
    mix = dict(getattr(config, "official_mixer_cfg", None) or {})
    mix.update(expand_ratio=config.expand_ratio, mem_size=config.mem_size, normalize_epsilon=config.normalize_epsilon,
               input_gate_low_rank=config.input_gate_low_rank)
    if config.conv_size != 4 or "d_conv" in mix:
        mix["d_conv"] = config.conv_size
    out = dict(getattr(config, "official_extra", None) or {})
    out.update(model_type="rodimus", block_type=config.block_type, d_model=config.hidden_size,
               n_layer=config.num_hidden_layers, vocab_size=config.vocab_size, norm_epsilon=config.rms_norm_eps,
               initializer_range=config.initializer_range, max_position_embeddings=config.max_position_embeddings,
               residual_in_fp32=config.residual_in_fp32, tie_word_embeddings=config.tie_word_embeddings,
               bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
               use_cache=config.use_cache, mixer_cfg=mix)
    if config.block_type == "rodimus_plus":
        att = dict(getattr(config, "official_attn_cfg", None) or {})
        att.update(num_heads=config.num_heads, num_heads_k=1, num_heads_v=config.num_heads,
                   window_size=config.window_size, ffn_expand_ratio=config.ffn_expand_ratio,
                   rotary_emb_dim=-1 if config.rotary_dim is None else config.rotary_dim)
        if config.rope_theta != 10000.0 or "rotary_emb_base" in att:
            att["rotary_emb_base"] = config.rope_theta
        out["attn_cfg"] = att
    return out


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # weights_only: a checkpoint can never run code here
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as err:  # truncated or corrupt files raise many different errors
        raise ValueError(f"cannot read weights file {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors | pytorch_model.bin, or their sharded *.index.json variants."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(_load_weights_file(folder / shard))
            return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return _load_weights_file(folder / name)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def remap(state_dict: dict[str, torch.Tensor], table: dict[str, str], expected_shapes: dict[str, tuple],
          what: str, ignore=None) -> dict[str, torch.Tensor]:
    """Apply a key map, checking that every key is used once and every shape matches."""
    present = {k: v for k, v in state_dict.items() if not (ignore and ignore(k))}
    missing = [k for k in table if k not in present]
    unexpected = [k for k in present if k not in table]
    if missing:
        raise ValueError(f"{what}: missing tensor(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        raise ValueError(f"{what}: unexpected tensor(s): {', '.join(unexpected[:5])}"
                         + (" ..." if len(unexpected) > 5 else ""))
    out = {}
    for src, dst in table.items():
        t = present[src]
        if tuple(t.shape) != tuple(expected_shapes[dst]):
            raise ValueError(f"{what}: tensor {src} has shape {tuple(t.shape)}, expected {tuple(expected_shapes[dst])}")
        out[dst] = t
    return out


def _slimkv_shapes(config: RodimusConfig) -> dict[str, tuple]:
    from ..models.modeling import RodimusForCausalLM

    with torch.device("meta"):
        model = RodimusForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def official_to_slimkv(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype | None = None, *,
                       overwrite: bool = False) -> Path:
    """Read an official folder (config.json + weights) and write a slimkv `save_pretrained` folder at dst."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    guard = dict(command="convert official", overwrite=overwrite, sources=[src])
    check_output_folder(dst, **guard)
    config = config_from_official(_read_config(src))
    sd = read_weights(src)
    if config.tie_word_embeddings and "lm_head.weight" in sd:
        if not torch.equal(sd["lm_head.weight"], sd["model.embeddings.weight"]):
            raise ValueError("tie_word_embeddings is true but lm_head.weight differs from model.embeddings.weight")
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    shapes = _slimkv_shapes(config)
    weights = remap(sd, key_map(config), shapes, f"official checkpoint {src}", ignore=BUFFER_PATTERN.search)
    if config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    with output_folder(dst, **guard) as tmp:
        config.save_pretrained(tmp)
        # store once; tied heads share the embedding tensor
        save_file({k: v.contiguous() for k, v in weights.items()
                   if not (config.tie_word_embeddings and k == "lm_head.weight")},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return dst


def slimkv_to_official(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a slimkv folder back in the official layout (config.json + model.safetensors)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    guard = dict(command="convert to-official", overwrite=overwrite, sources=[src])
    check_output_folder(dst, **guard)
    raw = _read_config(src)
    if raw.get("model_type") != RodimusConfig.model_type:
        raise ValueError(f"{src} is not a slimkv Rodimus checkpoint (model_type {raw.get('model_type')!r})")
    config = RodimusConfig.from_pretrained(src)
    sd = read_weights(src)
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    inverse = {v: k for k, v in key_map(config).items()}
    shapes = _slimkv_shapes(config)
    official = remap(sd, inverse, {v: shapes[k] for k, v in inverse.items()}, f"slimkv checkpoint {src}")
    with output_folder(dst, **guard) as tmp:
        atomic_write_text(tmp / "config.json", json.dumps(config_to_official(config), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in official.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
    return dst


@dataclass
class ConvertConfig:
    """`slimkv convert`: one conversion between the official Rodimus layout and slimkv (`convert`)."""

    # official: an official Rodimus folder -> slimkv; to-official: slimkv -> the official layout
    direction: Literal["official", "to-official"] = setting(positional=True)
    # source folder (config.json + model.safetensors | pytorch_model.bin)
    src: str = setting(positional=True)
    # destination folder: new, empty, or an earlier output of the same conversion (built beside it, then swapped in
    # whole)
    dst: str = setting(positional=True)
    # replace a non-empty DST that this command did not write (only once the new output is complete)
    overwrite: bool = False
    # cast weights when converting from the official layout (none = keep)
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None


def convert(config: ConvertConfig) -> Path:
    """Run the conversion `config` names; returns the written folder."""
    if config.direction == "official":
        dtype = getattr(torch, config.dtype) if config.dtype else None
        return official_to_slimkv(config.src, config.dst, dtype=dtype, overwrite=config.overwrite)
    return slimkv_to_official(config.src, config.dst, overwrite=config.overwrite)
