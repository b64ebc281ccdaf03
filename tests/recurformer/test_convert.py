"""Conversion: selection rules, the branch registry and each branch's init from the replaced heads, bad input."""
import json

import pytest
import torch

from slimkv.layers.branches import BranchGeometry, branch_names, build_branch
from slimkv.models.recurformer import attention_geometry
from slimkv.recurformer.convert import build_converted, cache_bytes
from slimkv.recurformer.select import learned_scores, select_units

from .conftest import tiny_source


def test_select_units_ranks_globally_and_keeps_one_unit_per_layer():
    scores = [[0.9, 0.8, 0.1], [0.2, 0.3, 0.25], [0.95, 0.5, 0.4]]
    assert select_units(scores, ratio=0.0) == [[], [], []]
    # 4 of 9: 0.95, 0.9, 0.8, 0.5 - and layer 0 still keeps unit 2
    assert select_units(scores, ratio=0.45) == [[0, 1], [], [0, 1]]
    # 6 of 9 would take all of layers 0 and 2; each layer keeps its lowest-scoring unit
    assert select_units(scores, ratio=0.67) == [[0, 1], [1, 2], [0, 1]]
    assert select_units(scores, threshold=0.45) == [[0, 1], [], [0, 1]]
    # learned gates rank the same way (scores = 1 - alpha)
    assert select_units(scores, ratio=0.45, strategy="learned") == [[0, 1], [], [0, 1]]
    random_pick = select_units(scores, ratio=0.45, strategy="random", seed=3)
    assert sum(map(len, random_pick)) == 4 and all(len(u) <= 2 for u in random_pick)
    assert random_pick == select_units(scores, ratio=0.45, strategy="random", seed=3)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        select_units([[0.5, 0.5]], ratio=ratio)


def test_learned_scores_are_checked_against_the_model(tmp_path):
    path = tmp_path / "gates.json"
    path.write_text(json.dumps({"unit_scores": [[0.1, 0.9], [0.5, 0.2]]}))
    assert learned_scores(path, 2, 2) == [[0.1, 0.9], [0.5, 0.2]]
    with pytest.raises(ValueError, match="gates for 2 layers x 2 units; the model has 3 x 2"):
        learned_scores(path, 3, 2)
    with pytest.raises(FileNotFoundError, match="stage=gates"):
        learned_scores(tmp_path / "missing.json", 2, 2)


def test_single_kv_unit_layers_need_an_explicit_flag():
    scores = [[0.9], [0.2]]
    with pytest.raises(ValueError, match="single KV unit.*--allow-empty-layers"):
        select_units(scores, ratio=0.5)
    assert select_units(scores, ratio=0.5, allow_empty_layers=True) == [[0], []]
    converted = build_converted(tiny_source("llama", num_kv_heads=1), [[0], []], "mamba2")
    assert converted.model.layers[0].self_attn.kept_units == []
    with torch.no_grad():
        assert torch.isfinite(converted(torch.randint(0, 97, (1, 7))).logits).all()


def test_registry_builds_every_branch_and_checks_options():
    assert set(branch_names()) >= {"mamba2", "ddts", "window"}
    geometry = BranchGeometry(hidden_size=64, head_dim=16, num_heads=2, num_units=1)
    for name in branch_names():
        branch = build_branch(name, geometry, backends={"gla_backend": "chunked", "attn_backend": "chunked"})
        shapes = branch.state_shapes(3)
        assert shapes and all(shape[0] == 3 for shape in shapes.values())
    with pytest.raises(ValueError, match="unknown branch 'mamba3'"):
        build_branch("mamba3", geometry)
    with pytest.raises(ValueError, match="branch 'window' has no option 'state_size'"):
        build_branch("window", geometry, {"state_size": 4})


def test_state_size_sets_the_recurrent_branches_decode_state():
    """--state-size is N of the Mamba2 state and n of DDTS: the state each keeps per replaced head shrinks with it."""
    geometry = BranchGeometry(hidden_size=64, head_dim=16, num_heads=2, num_units=1)

    def state_elements(name, options=None):
        branch = build_branch(name, geometry, options, backends={"gla_backend": "chunked"})
        return branch.state_shapes(1)["ssm_state"], branch

    shape, ddts = state_elements("ddts")
    assert ddts.mem_size == 64 and shape == (1, 1, 64, 2 * 16)      # unset: DDTS's own n
    shape, ddts = state_elements("ddts", {"state_size": 8})
    assert ddts.mem_size == 8 and shape == (1, 1, 8, 2 * 16)
    assert ddts.qk_proj.out_features == 2 * 8                       # its q and k are n wide
    shape, _ = state_elements("mamba2", {"state_size": 8})
    assert shape == (1, 2, 8, 16)                                   # N x head dim per replaced head

    # and the counted cache of a converted model: one float32 [n, R * D] state per layer with replaced units
    source = tiny_source("llama")
    units = [[0], [0]]
    full, small = (build_converted(source, units, "ddts", mixer_kwargs=kw) for kw in ({}, {"state_size": 8}))
    R_times_D = full.model.layers[0].self_attn.branch.num_heads * full.model.layers[0].self_attn.branch.head_dim
    assert cache_bytes(full, 1000) - cache_bytes(small, 1000) == len(units) * (64 - 8) * R_times_D * 4


def test_attention_init_reuses_the_pretrained_rows():
    source = tiny_source("qwen2")
    converted = build_converted(source, [[1], []], "mamba2", init="attention")
    branch, src = converted.model.layers[0].self_attn.branch, source.model.layers[0].self_attn
    torch.testing.assert_close(branch.c_proj.weight, src.q_proj.weight[32:64])
    torch.testing.assert_close(branch.c_proj.bias, src.q_proj.bias[32:64])
    torch.testing.assert_close(branch.b_proj.weight, src.k_proj.weight[16:32])
    torch.testing.assert_close(branch.x_proj.weight, torch.cat([src.v_proj.weight[16:32]] * 2))
    torch.testing.assert_close(branch.x_proj.bias, torch.cat([src.v_proj.bias[16:32]] * 2))
    assert not branch.conv_activation and converted.config.mixer_kwargs == {"conv_activation": False}
    with torch.no_grad():
        assert torch.isfinite(converted(torch.randint(0, 97, (1, 9))).logits).all()
    with pytest.raises(ValueError, match="no slot to go into"):
        build_converted(source, [[1], []], "ddts", init="attention")


def test_kept_rows_and_every_other_weight_are_bit_identical():
    source = tiny_source("qwen2")
    converted = build_converted(source, [[0], [1]], "mamba2")
    for idx, (src, new) in enumerate(zip(source.model.layers, converted.model.layers)):
        kept = slice((1 - idx) * 16, (2 - idx) * 16)
        assert torch.equal(new.self_attn.k_proj.weight, src.self_attn.k_proj.weight[kept])
        assert torch.equal(new.self_attn.v_proj.bias, src.self_attn.v_proj.bias[kept])
        assert torch.equal(new.self_attn.o_proj.weight, src.self_attn.o_proj.weight)
        assert torch.equal(new.mlp.down_proj.weight, src.mlp.down_proj.weight)
        assert torch.equal(new.input_layernorm.weight, src.input_layernorm.weight)


def test_unsupported_family_lists_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*llama, qwen2, mistral"):
        build_converted(gpt2, [[]], "mamba2")


def test_cache_bytes_of_the_source_count_every_kv_head():
    source = tiny_source("llama")
    geo = attention_geometry(source.config)
    assert cache_bytes(source, 1000) == 2 * geo.num_layers * geo.num_kv_heads * geo.head_dim * 1000 * 4
    assert cache_bytes(source, 1000, dtype=torch.bfloat16) == cache_bytes(source, 1000) // 2


def test_convert_passes_each_branch_the_options_it_takes():
    from slimkv.recurformer.convert import RecurFormerConvertConfig

    def options(mixer, **kw):
        return RecurFormerConvertConfig(model="m", out="o", ratio=0.5, mixer=mixer, attn_window=32, attn_sinks=2,
                                        **kw).mixer_kwargs()

    assert options("mamba2") == {} and options("mamba2", state_size=16) == {"state_size": 16}
    assert options("ddts") == {} and options("ddts", state_size=16) == {"state_size": 16}
    assert options("window", state_size=16) == {"window": 32, "sinks": 2}
    assert options("window_mamba2", state_size=16) == {"window": 32, "sinks": 2, "state_size": 16}
