"""The run config of `slimkv train` (train/config.py): the presets, the model section built by the model's own config,
and the rules that span sections."""
import pytest

from slimkv.train.config import RunConfig, load_run_config


def test_every_preset_loads_and_is_complete():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert presets, "configs/*.yaml missing"
    for preset in presets:
        cfg = load_run_config(preset)
        assert isinstance(cfg, RunConfig)
        for arch in ("rodimus", "rodimus_plus", "llama"):
            again = load_run_config(preset, [f"--model.arch={arch}"])
            assert again.model.resolved_num_layers() > 0


def test_run_config_cross_field_rules(tmp_path):
    from slimkv.train.config import run_config_from_dict

    with pytest.raises(ValueError, match="'data.seq_len' \\(128\\) exceeds the model's position limit"):
        run_config_from_dict({"model": {"num_hidden_layers": 2, "max_position_embeddings": 64},
                              "data": {"seq_len": 128}})
    with pytest.raises(ValueError, match="'model.layers_by_arch' has no 'llama'"):
        run_config_from_dict({"model": {"arch": "llama", "layers_by_arch": {"rodimus": 2}}})
    with pytest.raises(ValueError, match="'train.batch_size' \\(6\\) must be a multiple"):
        run_config_from_dict({"model": {"num_hidden_layers": 2}, "train": {"batch_size": 6, "micro_batch_size": 4}})


def test_every_model_option_is_settable_and_validated_by_the_model_config():
    from slimkv.models.factory import rodimus_options
    from slimkv.train.config import ModelConfig, run_config_from_dict

    base = {"model": {"arch": "rodimus_plus", "num_hidden_layers": 2, "hidden_size": 64},
            "data": {"source": "synthetic", "seq_len": 16}}
    cfg = run_config_from_dict(base, ["--model.gla_backend=chunked", "--model.attn_backend=chunked",
                                      "--model.decode_backend=torch", "--model.kernel_backend=torch",
                                      "--model.rope_theta=500000", "--model.rotary_dim=16"])
    built = cfg.model.model_config(100)
    assert (built.gla_backend, built.attn_backend, built.decode_backend, built.kernel_backend) == \
        ("chunked", "chunked", "torch", "torch")
    assert built.rope_theta == 500000.0 and built.rotary_dim == 16 and built.block_type == "rodimus_plus"
    # the section's options are RodimusConfig's own, under its names and with its defaults
    fields = {f.name for f in __import__("dataclasses").fields(ModelConfig)}
    assert {o.name for o in rodimus_options()} <= fields and "block_type" not in fields
    assert ModelConfig().num_heads is None and ModelConfig().window_size == 4096
    # a value only the model config can judge is refused by it, before any run folder exists
    with pytest.raises(ValueError, match="rotary_dim"):
        run_config_from_dict(base, ["--model.rotary_dim=1000"])
    with pytest.raises(ValueError, match="did you mean 'model.gla_backend'"):
        run_config_from_dict(base, ["--model.gla_backnd=chunked"])
    with pytest.raises(ValueError, match="'model.arch' is 'rodimus_pls'; known: .*did you mean 'rodimus_plus'"):
        run_config_from_dict(base, ["--model.arch=rodimus_pls"])


def test_the_llama_baseline_is_matched_to_the_same_sizes():
    from slimkv.train.config import run_config_from_dict

    cfg = run_config_from_dict({"model": {"arch": "llama", "num_hidden_layers": 3, "hidden_size": 128,
                                          "mem_size": 16, "window_size": 8}, "data": {"seq_len": 16}})
    llama = cfg.model.model_config(50)
    assert type(llama).__name__ == "LlamaConfig" and llama.num_attention_heads == 2 and llama.num_hidden_layers == 3
    assert llama.intermediate_size == 384 and llama.num_key_value_heads == 2 and llama.vocab_size == 50


def test_legacy_zero_means_derive_it():
    from slimkv.train.config import run_config_from_dict

    cfg = run_config_from_dict({"model": {"num_hidden_layers": 2, "num_heads": 0, "intermediate_size": 0},
                                "data": {"seq_len": 16}})
    assert cfg.model.num_heads is None and cfg.model.intermediate_size is None
    assert cfg.model.model_config(10).num_heads == 1024 // 128
