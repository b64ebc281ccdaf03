#!/usr/bin/env bash
# The param-matched comparison the Rodimus reviewers asked for (issue 14): the 130m preset of every arch trained on
# the same tokens of the project corpus, one after another on one GPU, then one table (slimkv eval compare: held-out
# perplexity, needle in a haystack, training tokens/s, decode state bytes) and the loss-vs-position curves up to 16x
# the training length (slimkv eval length). Run from the repository root:
#     OUT=runs/matched SLIMKV_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu/matched_130m.sh
# Knobs: CONFIG (configs/130m.yaml; "tiny" runs the same comparison on a CPU in an hour, docs/evaluations.md),
# ARCHS (default "rodimus rodimus_plus mamba2 gla llama"), STEPS (300), BATCH (32), SEQ (1024),
# CAP_S (per-run wall cap in seconds, 0 = none; a capped run trains fewer tokens and the table says so),
# SKIP_EVAL=1 (train only), NIAH ("1024,2048,4096,8192"; positions are allowed up to 16 x SEQ, so the Transformer runs there too and shows what
# RoPE past its training length is worth), EXTRA (more --field=value overrides of slimkv train, e.g. for a CPU smoke test).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/matched}"; CONFIG="${CONFIG:-configs/130m.yaml}"
ARCHS="${ARCHS:-rodimus rodimus_plus mamba2 gla llama}"
STEPS="${STEPS:-300}"; BATCH="${BATCH:-32}"; SEQ="${SEQ:-1024}"; CAP_S="${CAP_S:-0}"
NIAH="${NIAH:-1024,2048,4096,8192}"; EXTRA="${EXTRA:-}"; DEVICE="${DEVICE:-auto}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/runs"
runs=()
for arch in $ARCHS; do
  echo "== train $arch: $STEPS steps x $BATCH x $SEQ tokens ==" >&2
  if [ ! -f "$OUT/runs/$arch/model/config.json" ]; then
    # a run stopped part-way (SIGTERM, CAP_S of the whole script's timeout) continues from its checkpoint
    resume=(); [ -d "$OUT/runs/$arch/checkpoints" ] && resume=(--resume)
    # shellcheck disable=SC2086
    python -m slimkv.cli.main train "$CONFIG" "${resume[@]}" --model.arch="$arch" --train.parallel=none \
      --train.name="$arch" --train.out_dir="$OUT/runs" --train.steps="$STEPS" --train.batch_size="$BATCH" \
      --train.micro_batch_size="$BATCH" --data.seq_len="$SEQ" --model.max_position_embeddings=$((16 * SEQ)) \
      --optim.warmup_steps=$((STEPS / 10)) --train.max_seconds="$CAP_S" --train.checkpoint_every=0 \
      --eval.every=0 --log.every=10 --log.progress=false --train.device="$DEVICE" $EXTRA
  fi
  runs+=("$OUT/runs/$arch")
done
[ -n "${SKIP_EVAL:-}" ] && exit 0
python -m slimkv.cli.main eval compare "${runs[@]}" --niah-lengths "$NIAH" --device "$DEVICE" --out "$OUT" -q
python -m slimkv.cli.main eval length "${runs[@]}" --length $((16 * SEQ)) --chunk "$SEQ" --bin-size $((SEQ / 4)) \
  --max-sequences 8 --batch 2 --trained-length "$SEQ" --device "$DEVICE" --out "$OUT" -q
