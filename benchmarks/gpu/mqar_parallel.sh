#!/usr/bin/env bash
# The MQAR sweep of docs/evaluations.md split into one process per (arch, learning rate) on one GPU: the 2-layer
# models are far too small to fill an H200 alone, so the parts share it, then `slimkv eval mqar --merge` joins them
# into one mqar.json + mqar.png. Run from the repository root:
#     OUT=runs/mqar SIZES=16,64,256 MINUTES=4 bash benchmarks/gpu/mqar_parallel.sh
# Knobs: ARCHS ("rodimus rodimus_plus mamba2 gla"; llama, the full-attention anchor, always runs once per lr),
# LRS ("1e-3 1e-2"), SIZES ("16,32,64,128,256"), STEPS (1500), MINUTES (the budget of every part), D_MODEL (128),
# EXTRA (more options of slimkv eval mqar), SEEDS ("0"; several seeds run as separate parts, and the merge averages
# them per learning rate, docs/evaluations.md). A part whose mqar.json exists is not run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/mqar}"
ARCHS="${ARCHS:-rodimus rodimus_plus mamba2 gla}"; LRS="${LRS:-1e-3 1e-2}"; SIZES="${SIZES:-16,32,64,128,256}"
STEPS="${STEPS:-1500}"; MINUTES="${MINUTES:-4}"; D_MODEL="${D_MODEL:-128}"; EXTRA="${EXTRA:-}"
DEVICE="${DEVICE:-auto}"; TAG="${TAG:-$(echo "$SIZES" | tr ',' '-')}"; SEEDS="${SEEDS:-0}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
mkdir -p "$OUT/parts"
pids=(); parts=()
for seed in $SEEDS; do
  # seed 0 keeps the part names of earlier runs
  suffix=""; [ "$seed" != 0 ] && suffix="-s$seed"
  for lr in $LRS; do
    for arch in $ARCHS llama; do
      part="$OUT/parts/$arch-lr$lr-n$TAG$suffix"
      [ "$arch" = llama ] && part="$OUT/parts/llama-lr$lr$suffix"
      parts+=("$part")
      [ -f "$part/mqar.json" ] && continue
      # shellcheck disable=SC2086
      python -m slimkv.cli.main eval mqar --archs "$arch" --state-sizes "$SIZES" --lrs "$lr" --d-models "$D_MODEL" \
        --steps "$STEPS" --max-minutes "$MINUTES" --seed "$seed" --device "$DEVICE" --out "$part" $EXTRA \
        > "$part.log" 2>&1 &
      pids+=($!)
    done
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for part in "${parts[@]}"; do [ -f "$part/mqar.json" ] || echo "part failed: $part (see $part.log)" >&2; done
# every finished part of this folder, earlier invocations' other state sizes included
done_parts=()
for json in "$OUT"/parts/*/mqar.json; do done_parts+=("$(dirname "$json")"); done
merged="$OUT/merged-$(date +%H%M%S)"
python -m slimkv.cli.main eval mqar --merge "$(IFS=,; echo "${done_parts[*]}")" --out "$merged" --quiet
echo "merged ${#done_parts[@]} parts into $merged"
exit $status
