#!/usr/bin/env bash
# Scaling of `slimkv train` on 1, 2, 4 and 8 GPUs of one host (issue 15): the 1.4B presets (Rodimus, Rodimus+,
# parameter-matched Llama) under torchrun with FSDP2 (fully_shard per block, bf16 autocast), DCP checkpoints,
# synthetic tokens (no corpus needed), T 2048 and 8192.
#   weak scaling:   MICRO sequences per GPU per step, global batch = MICRO x GPUs
#   strong scaling: global batch GLOBAL, split over the GPUs
# then a resume check across world sizes: checkpoint on RESUME_FROM GPUs, resume on RESUME_TO (DCP reshards), and
# compare the next step's loss with the uninterrupted run.
#     OUT=/tmp/out bash benchmarks/gpu/scaling.sh
# Writes $OUT/scaling/<mode>-<arch>-T<seq>-g<gpus>.json per run, then $OUT/scaling.json and $OUT/scaling.png
# (tokens/s per GPU and efficiency against 1 GPU). Knobs: GPUS ("1 2 4 8", capped by the GPUs visible), ARCHS
# ("rodimus rodimus_plus llama"), SEQS ("2048 8192"), MODES ("weak strong"), SECONDS (per run, default 90), MICRO
# (default 4), GLOBAL (default 32), CONFIG (default configs/1.4b.yaml), RESUME_FROM / RESUME_TO (4 / 2; "" skips),
# EXTRA (more --field=value overrides, e.g. a tiny config for a CPU smoke run with DEVICE=cpu).
# NVLink multicast stays off (the lent machines' rule): NCCL_NVLS_ENABLE=0.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/scaling}"
ARCHS="${ARCHS:-rodimus rodimus_plus llama}"
SEQS="${SEQS:-2048 8192}"
MODES="${MODES:-weak strong}"
SECONDS_PER_RUN="${SECONDS:-90}"
MICRO="${MICRO:-4}"
GLOBAL="${GLOBAL:-32}"
CONFIG="${CONFIG:-configs/1.4b.yaml}"
RESUME_FROM="${RESUME_FROM-4}"
RESUME_TO="${RESUME_TO-2}"
DEVICE="${DEVICE:-cuda}"
EXTRA="${EXTRA:-}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
VISIBLE=$(python -c "import torch; print(torch.cuda.device_count() if '$DEVICE' == 'cuda' else 2)")
GPUS="${GPUS:-1 2 4 8}"
RUNS="$(mktemp -d /tmp/slimkv-scaling.XXXXXX)"
mkdir -p "$OUT/scaling"

train() {  # train NAME GPUS MICRO_BATCH GLOBAL_BATCH STEPS_OR_0 extra...
  local name=$1 gpus=$2 micro=$3 global=$4 steps=$5; shift 5
  python -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m slimkv.cli.main train "$CONFIG" \
    --data.source=synthetic --data.synthetic_vocab_size=32768 --data.synthetic_tokens=2000000 \
    --train.parallel=fsdp --train.device="$DEVICE" --train.name="$name" --train.out_dir="$RUNS" \
    --train.micro_batch_size="$micro" --train.batch_size="$global" --train.export_model=false \
    --eval.every=-1 --log.every=1 --log.tensorboard=false --log.progress=false --optim.warmup_steps=10 \
    "$@" $EXTRA --json "$RUNS/$name.json" 2>&1 | grep -v "UserWarning\|register_pre_backward_hook" | tail -n 8 >&2
}

for seq in $SEQS; do
  for arch in $ARCHS; do
    for mode in $MODES; do
      for gpus in $GPUS; do
        [ "$gpus" -le "$VISIBLE" ] || continue
        if [ "$mode" = weak ]; then micro=$MICRO; global=$((MICRO * gpus)); else micro=$MICRO; global=$GLOBAL; fi
        [ $((global % (micro * gpus))) -eq 0 ] || { echo "skip $mode g$gpus: $global not a multiple" >&2; continue; }
        name="$mode-$arch-T$seq-g$gpus"
        echo "== $name (global batch $global) ==" >&2
        train "$name" "$gpus" "$micro" "$global" 0 --model.arch="$arch" --data.seq_len="$seq" \
          --model.max_position_embeddings="$seq" --train.steps=100000 --train.max_seconds="$SECONDS_PER_RUN" \
          --train.checkpoint_every=0 --train.activation_checkpointing="$([ "$seq" -ge 8192 ] && echo true || echo false)" \
          || { echo "{\"error\": \"run failed\"}" > "$RUNS/$name.json"; }
        cp "$RUNS/$name.json" "$OUT/scaling/$name.json"
      done
    done
  done
done

if [ -n "$RESUME_FROM" ] && [ "$RESUME_FROM" -le "$VISIBLE" ]; then
  arch=$(echo $ARCHS | cut -d' ' -f1)
  common=(--model.arch="$arch" --data.seq_len=2048 --train.checkpoint_every=4 --train.keep_checkpoints=4)
  # the uninterrupted run, and a copy stopped at step 4 on RESUME_FROM GPUs, then resumed on RESUME_TO for step 5
  train resume-ref "$RESUME_FROM" 1 8 0 "${common[@]}" --train.steps=5
  train resume-cut "$RESUME_FROM" 1 8 0 "${common[@]}" --train.steps=4
  train resume-cut "$RESUME_TO" 1 8 0 "${common[@]}" --train.steps=5 --resume --allow-config-change
  python - "$RUNS" "$OUT/scaling/resume.json" "$RESUME_FROM" "$RESUME_TO" <<'PY'
import json, pathlib, sys
runs, out, a, b = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
def losses(name):
    rows = [json.loads(l) for l in (runs / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
ref, cut = losses("resume-ref"), losses("resume-cut")
report = {"checkpoint_gpus": int(a), "resume_gpus": int(b), "step5_uninterrupted": ref.get(5),
          "step5_resumed": cut.get(5), "abs_diff": abs(ref.get(5, float("nan")) - cut.get(5, float("nan")))}
out.write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report))
PY
fi

python - "$OUT" <<'PY'
import json, os, pathlib, subprocess, sys
out = pathlib.Path(sys.argv[1])
runs = {}
for path in sorted((out / "scaling").glob("*-g*.json")):
    runs[path.stem] = json.loads(path.read_text())
commit = os.environ.get("SLIMKV_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                           text=True).stdout.strip() or None
import torch
report = {"commit": commit, "torch": torch.__version__,
          "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
          "nccl": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}, "runs": {}}
for name, summary in runs.items():
    mode, rest = name.split("-", 1)
    arch, seq, gpus = rest.rsplit("-", 2)
    g = int(gpus[1:])
    row = {"mode": mode, "arch": arch, "seq": int(seq[1:]), "gpus": g, **summary}
    if summary.get("tokens_per_s"):
        row["tokens_per_s_per_gpu"] = summary["tokens_per_s"] / g
    report["runs"][name] = row
for name, row in report["runs"].items():
    base = report["runs"].get(f"{row['mode']}-{row['arch']}-T{row['seq']}-g1", {})
    if row.get("tokens_per_s") and base.get("tokens_per_s"):
        ideal = base["tokens_per_s"] * row["gpus"]
        row["efficiency"] = row["tokens_per_s"] / ideal
(out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, mode in zip(axes, ("weak", "strong")):
    series = {}
    for row in report["runs"].values():
        if row["mode"] == mode and "efficiency" in row:
            series.setdefault(f"{row['arch']} T{row['seq']}", []).append((row["gpus"], row["efficiency"]))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    ax.axhline(0.9, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("efficiency vs 1 GPU")
    ax.set_title(f"{mode} scaling", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"slimkv train, FSDP2, commit {str(commit)[:12]}", fontsize=10)
fig.tight_layout()
fig.savefig(out / "scaling.png", dpi=120)
print(json.dumps({k: {kk: v.get(kk) for kk in ("tokens_per_s", "tokens_per_s_per_gpu", "efficiency", "peak_memory_bytes")}
                  for k, v in report["runs"].items()}, indent=1))
PY
rm -rf "$RUNS"
