#!/usr/bin/env bash
# 2-GPU verification of `slimkv train` (issue 3 item 4): the 130m Rodimus+ preset under torchrun with NCCL, once with
# DDP and once with FSDP2, on synthetic tokens (no corpus needed), each for about a minute of training.
# Writes $OUT/train_2gpu.json (default OUT: runs/bench/train-2gpu): tokens/s (training steps only, first step
# excluded), peak CUDA memory per rank, final loss, step count, and the shared machine header (the real commit:
# SLIMKV_COMMIT, else git). Promote it with `slimkv bench promote $OUT`. Run from the repository root on 2 GPUs:
#     OUT=/tmp/out SLIMKV_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu/train_2gpu.sh
# Environment knobs: SECONDS_PER_ENGINE (default 60), ENGINES (default "ddp fsdp"), MICRO (default 8),
# CONFIG (default configs/130m.yaml), EXTRA (more --field=value overrides, e.g. for a CPU smoke test).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/bench/train-2gpu}"
SECONDS_PER_ENGINE="${SECONDS_PER_ENGINE:-60}"
ENGINES="${ENGINES:-ddp fsdp}"
MICRO="${MICRO:-8}"
CONFIG="${CONFIG:-configs/130m.yaml}"
EXTRA="${EXTRA:-}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4
RUNS="$(mktemp -d /tmp/slimkv-2gpu.XXXXXX)"

for engine in $ENGINES; do
  echo "== $engine ==" >&2
  python -m torch.distributed.run --standalone --nproc_per_node=2 -m slimkv.cli.main train "$CONFIG" \
    --model.arch=rodimus_plus \
    --data.source=synthetic --data.synthetic_vocab_size=32768 --data.synthetic_tokens=1000000 \
    --train.parallel="$engine" --train.name="2gpu-$engine" --train.out_dir="$RUNS" \
    --train.steps=100000 --train.max_seconds="$SECONDS_PER_ENGINE" --train.micro_batch_size="$MICRO" \
    --train.checkpoint_every=0 --train.export_model=false \
    --eval.every=-1 --log.every=5 --log.tensorboard=false --log.progress=false \
    $EXTRA --json "$RUNS/summary-$engine.json" 2>&1 | tail -n 20 >&2
done

python - "$RUNS" "$OUT/train_2gpu.json" $ENGINES <<'PY'
import json, os, sys, pathlib, platform
import torch, transformers
from slimkv.bench.harness import machine_header, write_json
runs, out, engines = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
header = machine_header("cuda" if torch.cuda.is_available() else "cpu")
commit = header["git_commit"]
report = {
    "header": header,
    "what": "slimkv train, " + os.environ.get("CONFIG", "configs/130m.yaml") + ", arch rodimus_plus, synthetic tokens, torchrun --nproc_per_node=2",
    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
    "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    "commit": commit, "engines": {},
}
for engine in engines:
    summary = json.loads((runs / f"summary-{engine}.json").read_text())
    metrics = [json.loads(l) for l in (runs / f"2gpu-{engine}" / "metrics.jsonl").read_text().splitlines() if l]
    report["engines"][engine] = {
        "steps": summary["steps"], "tokens_seen": summary["tokens_seen"],
        "tokens_per_s": summary["tokens_per_s"],
        "tokens_per_s_per_gpu": summary["tokens_per_s"] / 2 if summary["tokens_per_s"] else None,
        "peak_memory_gib": summary["peak_memory_bytes"] / 2**30 if summary["peak_memory_bytes"] else None,
        "final_loss": summary["final_loss"], "first_loss": next((m["loss"] for m in metrics if "loss" in m), None),
        "params": summary["params"], "tokens_per_step": summary["tokens_seen"] // max(1, summary["steps"]),
        "device": summary["device"], "world_size": summary["world_size"],
    }
write_json(out, report)
print(json.dumps(report, indent=2))
PY
rm -rf "$RUNS"
