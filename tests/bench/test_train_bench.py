"""`slimkv bench train` off the GPU: its pure parts on real model shapes, and one whole run on toy widths.

The GPU path itself runs on the device machine; here the same orchestration (a subprocess per config, JSON + PNG,
the summary table) runs on the CPU with `device="cpu", tiny=True`, and the on-device checker runs its checks on tiny
shapes under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.ops.triton_support import INTERPRETED

from slimkv.bench import fused_checks  # noqa: E402
from slimkv.bench.train import (  # noqa: E402
    TrainBenchOptions,
    breakdown,
    categorize,
    choose_batch,
    commit_hash,
    count_params,
    flops_per_token,
    format_table,
    matched_llama_layers,
    mean_keys,
    model_config,
    parse_overrides,
    plot_png,
    run_train_bench,
    unknown_override_keys,
    variants,
)
from slimkv.cli.main import main  # noqa: E402


def test_llama_matched_to_rodimus_1_4b_has_25_layers():
    # docs/rodimus.md section 7: 25 Llama layers match Rodimus-1.4B's parameter count
    layers, rodimus, llama = matched_llama_layers("rodimus")
    assert layers == 25 and abs(llama - rodimus) / rodimus < 0.02
    assert 1.5e9 < rodimus < 1.56e9
    layers_plus, rodimus_plus, _ = matched_llama_layers("rodimus_plus")
    assert layers_plus > layers and rodimus_plus > rodimus


@pytest.mark.parametrize("name, category", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matmul"),
    ("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NTN", "matmul"),
    ("gla_bwd_kernel_qk_grad", "gla"),
    ("rms_norm_bwd_kernel", "norm"),
    ("conv_silu_fwd_kernel", "conv"),
    ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<1, float>", "conv"),
    ("ce_bwd_kernel_chunk", "loss"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::", "loss"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)",
     "casts/copies"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 3, 128, 1>", "casts/copies"),
    ("Memset (Device)", "casts/copies"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>", "reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::silu_kernel", "elementwise"),
    ("ddts_gates_bwd_kernel", "elementwise"),
    # strided elementwise ops are "..._impl_nocast<...>": an elementwise op, not a cast; a strided copy stays a copy
    ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<float",
     "elementwise"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_",
     "casts/copies"),
    ("void at::native::indexing_backward_kernel<float, 4>", "other"),
])
def test_kernel_categories(name, category):
    assert categorize(name) == category


def test_breakdown_sums_by_category():
    out = breakdown({"gla_fwd_kernel_state": (2.0, 48), "nvjet_tst_x": (6.0, 300), "mystery": (2.0, 1)}, 12.0)
    cats = out["categories"]
    assert cats["gla"]["ms"] == 2.0 and cats["matmul"]["launches"] == 300 and cats["other"]["share"] == 0.2
    assert out["kernel_ms"] == 10.0 and out["launches"] == 349 and out["step_ms"] == 12.0


def test_choose_batch_from_the_memory_line():
    gib = 2**30
    # 30 GiB static + 8 GiB per sample, 100 GiB usable: 1 + (100 - 38) // 8 = 8
    assert choose_batch(38 * gib, 46 * gib, 100 * gib, 64) == 8
    assert choose_batch(38 * gib, 46 * gib, 100 * gib, 4) == 4
    assert choose_batch(38 * gib, 46 * gib, 30 * gib, 64) == 1


def test_mean_keys_and_flops_per_token():
    assert mean_keys(4, None) == 2.5 and mean_keys(4, 8) == 2.5
    # window 1: positions 0.. see 1, 2, 2, 2 keys
    assert mean_keys(4, 1) == pytest.approx(7 / 4)
    cfg = model_config("llama", 2048, llama_layers=25)
    params = 25 * (4 * 2048**2 + 3 * 2048 * 5632) + 126464 * 2048
    # 6 FLOPs per matmul weight per token, plus causal attention 3 x 4 d (T + 1) / 2 per layer
    assert flops_per_token(cfg, 2048) == pytest.approx(6 * params + 25 * 12 * 2048 * 2049 / 2)
    rodimus = flops_per_token(model_config("rodimus", 2048), 2048)
    assert 6 * 1.4e9 < rodimus < 6 * 1.6e9
    # the baselines at configs/1.4b.yaml's depths are parameter-matched to Rodimus-1.4B (1.53B)
    for name in ("mamba2", "gla"):
        cfg = model_config(name, 2048)
        assert 1.45e9 < count_params(cfg) < 1.6e9
        assert 6 * 1.4e9 < flops_per_token(cfg, 2048) < 6 * 1.7e9


def test_overrides_and_variants():
    assert parse_overrides(["fused_ops=true", "rms_norm_eps=1e-6", "gla_backend=chunked"]) == {
        "fused_ops": True, "rms_norm_eps": 1e-6, "gla_backend": "chunked"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["fused_ops"])
    assert unknown_override_keys({"fused_ops": True, "rms_norm_eps": 1e-6}) == ["fused_ops"]
    opts = TrainBenchOptions(overrides={"a": 1}, compare=({"b": False},))
    assert variants("rodimus", opts) == [("rodimus", {"a": 1}), ("rodimus[b=False]", {"a": 1, "b": False})]
    assert variants("llama", opts) == [("llama", {})]
    assert model_config("rodimus", 2048, {"rms_norm_eps": 1e-6}).rms_norm_eps == 1e-6


def test_commit_comes_from_the_environment_first(monkeypatch):
    monkeypatch.setenv("SLIMKV_COMMIT", "abc123")
    assert commit_hash() == "abc123"
    monkeypatch.delenv("SLIMKV_COMMIT")
    assert len(commit_hash()) in (40, len("unknown"))


def test_table_and_plot_from_a_report():
    prof = breakdown({"nvjet_tst": (100.0, 10), "gla_fwd": (20.0, 4)}, 130.0)
    report = {"commit": "abc", "meta": {"device_name": "NVIDIA H200"}, "checks_passed": 2, "checks_total": 3,
              "check": {"checks": [{"op": "swiglu", "dtype": "float32", "passed": False}, {"passed": True},
                                   {"passed": True}]},
              "results": [{"model": "rodimus", "variant": "rodimus", "seq": 2048, "batch": 4, "checkpointing": False,
                           "tokens_per_s": 20000.0, "step_s": 0.41, "peak_mem_gib": 90.0, "mfu": 0.3,
                           "vs_llama": {"tokens_per_s_ratio": 0.6}, "profile": prof},
                          {"model": "llama", "variant": "llama", "seq": 2048, "error": "out of memory at batch 1"}]}
    table = format_table(report)
    assert "2/3 passed; FAILED: swiglu float32" in table
    assert "| rodimus | 2048 | 4 | no | 20,000 | 0.410 | 90.0 | 30.0% | 0.60x |" in table
    assert "| llama | 2048 | - | - | out of memory at batch 1" in table
    assert "| matmul | 100.0 (83%) |" in table
    assert plot_png(report)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not INTERPRETED, reason="the tiny scale is for the CPU interpreter")
def test_on_device_checker_passes_on_tiny_shapes():
    lines = []
    results = fused_checks.run_checks("tiny", log=lines.append)
    assert len(results) == 22 and all(r["passed"] for r in results), [r for r in results if not r["passed"]]
    assert sum(line.endswith(" ok") for line in lines) == 22
    mixer = [r for r in results if r["op"] == "mamba2 mixer"]
    assert len(mixer) == 2 and {"dh", "dx_proj.weight", "ssm_state"} <= set(mixer[0]["errors"])
    # a wrong "fast path" is caught: here it drops a factor of 2 against its spec
    def doubled(u, backend):
        return u[:, :3] * (1.0 if backend == "triton" else 2.0)

    bad = fused_checks._compare("toy", torch.float32, "[2, 6]", doubled, [torch.randn(2, 6)])
    assert not bad["passed"] and bad["errors"]["out0"] == pytest.approx(0.5)


@pytest.mark.skipif(not INTERPRETED, reason="the tiny scale is for the CPU interpreter")
def test_mamba2_mixer_check_catches_a_wrong_fused_glue(monkeypatch):
    import slimkv.layers.mamba2 as mamba2_layer

    device = torch.device("cpu")
    good = fused_checks._mamba2_checks(fused_checks.SHAPES["tiny"], device, fused_checks._gen(device))
    assert all(r["passed"] for r in good) and max(good[0]["errors"].values()) < 1e-5
    fused = mamba2_layer.gated_rms_norm

    def skip_twice(*args, backend, skip_scale=None, **kw):  # the fused path adds D x twice, the spec once
        return fused(*args, backend=backend, skip_scale=2 * skip_scale if backend != "torch" else skip_scale, **kw)

    monkeypatch.setattr(mamba2_layer, "gated_rms_norm", skip_twice)
    bad = fused_checks._mamba2_checks(fused_checks.SHAPES["tiny"], device, fused_checks._gen(device))
    assert not bad[0]["passed"] and bad[0]["errors"]["out"] > 1e-2 and bad[1]["passed"]  # only the gated mixer


@pytest.mark.slow
def test_whole_run_on_toy_widths(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMKV_COMMIT", "test-commit")
    opts = TrainBenchOptions(out=str(tmp_path), models=("rodimus", "mamba2", "gla", "llama"), seqs=(16,), steps=1,
                             warmup=0, check=False, device="cpu", tiny=True, profile_seqs=(), budget_s=600)
    lines = []
    report = run_train_bench(opts, log=lines.append)
    saved = json.loads((tmp_path / "train_bench.json").read_text())
    assert saved["commit"] == "test-commit" and saved["schema"] == "slimkv.bench.train/1"
    rows = {r["variant"]: r for r in saved["results"]}
    assert set(rows) == {"rodimus", "mamba2", "gla", "llama"}
    for r in rows.values():
        assert r["batch"] == 1 and r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["params"] > 0
        assert r["meta"]["torch"] == torch.__version__
    assert rows["rodimus"]["vs_llama"]["llama"] == "llama" and rows["mamba2"]["vs_llama"]["llama"] == "llama"
    assert (tmp_path / "train_bench.png").read_bytes()[:4] == b"\x89PNG"
    assert any(line.startswith("[rodimus T16]") for line in lines)
    assert "| rodimus | 16 | 1 | no |" in format_table(report)


def test_cli_without_a_gpu_is_one_line_and_exit_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "train", "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["slimkv bench: error: slimkv bench train needs a CUDA GPU"]


def test_gla_bytes_against_the_floor_at_the_rodimus_shape():
    # docs/kernels.md "GLA: the folded backward": 1.59x the floor forward, 2.07x forward + backward
    from slimkv.bench.kernels import Shape, floors, gla_design_bytes

    ceilings = {"copy_bytes_per_s": 4e12, "bf16_flop_per_s": 7.8e14}
    for mode, ratio in (("fwd", 1.59), ("fwd_bwd", 2.07)):
        design = gla_design_bytes(8, 2048, 1, 64, 4096, 2, mode)
        floor = floors(Shape("rodimus", 8, 2048, 1, 64, 4096, "channel"), torch.bfloat16, mode, ceilings)
        assert sum(design["stages"].values()) == design["total"]
        assert design["total"] / floor["bytes"] == pytest.approx(ratio, abs=0.005)
    # the states h and dh dominate: each as large as v at K = C = 64
    assert gla_design_bytes(8, 2048, 1, 64, 4096, 2, "fwd_bwd")["stages"]["qk_grad"] > 4 * 8 * 2048 * 4096 * 2


def test_finish_report_ratios_mfu_and_memory_at_the_same_batch():
    from slimkv.bench.train import finish_report

    rodimus = {"model": "rodimus", "variant": "rodimus", "seq": 2048, "batch": 4, "checkpointing": False,
               "tokens_per_s": 30000.0, "params": 1.53e9, "flops_per_token": 1e10, "bf16_flop_per_s": 8e14,
               "memory_model": {"static_gib": 30.0, "per_sample_gib": 15.0}}
    llama = {"model": "llama", "variant": "llama", "seq": 2048, "batch": 8, "checkpointing": False,
             "tokens_per_s": 20000.0, "params": 1.545e9, "flops_per_token": 1e10, "peak_mem_gib": 90.0}
    report = {"check": {"ceilings": {"bf16_flop_per_s": 7.5e14}}, "results": [rodimus, llama]}
    finish_report(report)
    assert rodimus["vs_llama"]["tokens_per_s_ratio"] == pytest.approx(1.5)
    # 30 GiB + 8 x 15 GiB at Llama's batch, against Llama's 90 GiB
    assert rodimus["vs_llama"]["peak_gib_at_llama_batch"] == pytest.approx(150.0)
    # the check worker's measured matrix rate wins over the row's own
    assert rodimus["mfu"] == pytest.approx(1e10 * 30000 / 7.5e14) and "vs_llama" not in llama
