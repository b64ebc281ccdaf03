"""Random checkpoints in the OFFICIAL layout, built from the key table of docs/rodimus.md section 5 only."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def official_config(block_type="rodimus", d=64, n_layer=2, vocab=97, tied=True, heads=4, window=8, mem=16,
                    eps_n=1e-12):
    cfg = {
        "model_type": "rodimus", "block_type": block_type, "d_model": d, "n_layer": n_layer, "vocab_size": vocab,
        "norm_epsilon": 1e-5, "initializer_range": 0.02, "rescale_prenorm_residual": True, "residual_in_fp32": True,
        "use_fast_path": True, "use_fused_cross_entropy": True, "use_fused_swiglu": True, "dropout": 0.0,
        "activation_dropout": 0.0, "attention_dropout": 0.0, "max_position_embeddings": 2048, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": tied, "use_cache": True,
        "use_scale_embedding": False, "use_norm_embedding": False, "no_weight_decay_on_bias": True,
        "no_weight_decay_on_norm": True, "no_weight_decay_on_embedding": True,
        "mixer_cfg": {"expand_ratio": 2, "mem_size": mem, "input_gate_low_rank": "auto", "mode": "fused_chunk",
                      "normalize_epsilon": eps_n},
    }
    if block_type == "rodimus_plus":
        cfg["attn_cfg"] = {"num_heads": heads, "num_heads_k": 1, "num_heads_v": heads, "window_size": window,
                           "ffn_expand_ratio": 4 / 3, "rotary_emb_dim": -1, "rotary_emb_scale_base": None}
    return cfg


def official_state_dict(cfg, seed=0, with_buffers=True):
    g = torch.Generator().manual_seed(seed)
    d, L, V = cfg["d_model"], cfg["n_layer"], cfg["vocab_size"]
    e = (int(d * cfg["mixer_cfg"]["expand_ratio"]) + 7) // 8 * 8
    m = cfg["mixer_cfg"]["mem_size"]
    r = max(d // 64, 16)

    def rnd(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    sd = {"model.embeddings.weight": rnd(V, d, std=1.0), "model.norm_f.weight": 1 + rnd(d, std=0.1)}
    for i in range(L):
        p = f"model.layers.{i}."
        sd.update({
            p + "mixer_norm.weight": 1 + rnd(d, std=0.1),
            p + "mixer.fc.weight": rnd(2 * e, d),
            p + "mixer.act_norm.weight": 1 + rnd(e, std=0.1),
            p + "mixer.out_proj.weight": rnd(d, e),
            p + "mixer.inner_mixer.short_conv.conv1d.weight": rnd(e, 1, 4, std=0.5),
            p + "mixer.inner_mixer.short_conv.conv1d.bias": rnd(e),
            p + "mixer.inner_mixer.residual_weight": 1 + rnd(e, std=0.1),
            p + "mixer.inner_mixer.in_proj.weight": rnd(2 * m, e),
            p + "mixer.inner_mixer.ch_gate_proj.0.weight": rnd(r, e),
            p + "mixer.inner_mixer.ch_gate_proj.1.weight": rnd(e, r),
            p + "mixer.inner_mixer.ch_gate_proj.1.bias": rnd(e),
            p + "mixer.inner_mixer.mem_gate_proj.weight": rnd(2 * m, e),
            p + "mixer.inner_mixer.mem_gate_proj.bias": rnd(2 * m, std=1.0),
        })
        if cfg["block_type"] == "rodimus_plus":
            H = cfg["attn_cfg"]["num_heads"]
            hd = d // H
            f = (int(d * cfg["attn_cfg"]["ffn_expand_ratio"]) + 7) // 8 * 8
            sd.update({
                p + "attn_norm.weight": 1 + rnd(d, std=0.1),
                p + "attn.q_proj.weight": rnd(H * hd, d),
                p + "attn.k_proj.weight": rnd(hd, d),
                p + "attn.v_proj.weight": rnd(H * hd, d),
                p + "attn.out_proj.weight": rnd(d, d),
                p + "ffn_norm.weight": 1 + rnd(d, std=0.1),
                p + "ffn.fc.weight": rnd(2 * f, d),
                p + "ffn.out_proj.weight": rnd(d, f),
            })
        if with_buffers:
            sd[f"conv_state_{i}"] = torch.zeros(1, e, 3)
            sd[f"ssm_state_{i}"] = torch.zeros(1, m, e)
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = rnd(V, d)
    return sd


def write_official(folder: Path, cfg: dict, sd: dict, fmt="bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder
