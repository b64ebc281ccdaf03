#!/usr/bin/env bash
# RecurFormer experiment parts on one lent GPU, detached, so that they outlive the 10-minute device call that starts
# them (docs/recurformer.md). Each part is one `slimkv recurformer experiment` process with the same plan and its
# own --out; `--merge` joins them into one table afterwards. Run from the repository root, after assets.sh unpack:
#
#   prepare: bash benchmarks/gpu/recurformer_parts.sh prepare .assets-s/02     # in the call with the last piece
#   start:  PLAN="--preset smollm2-gpu --steps-a 600 --steps-b 400 ..." \
#           bash benchmarks/gpu/recurformer_parts.sh start /tmp/rf-c:original,control /tmp/rf-m:mamba2
#   wait:   bash benchmarks/gpu/recurformer_parts.sh wait 540 /tmp/rf-c /tmp/rf-m    # in every later call
#
# `wait` returns when every part has exited or after SECS, and always ends by printing each part's scored rows and
# packing its results, run records and log (no weights, no tokenizers) into $OUT/<part>.tgz: what a call brings
# back is complete even if the machine is gone before the next. The machine goes back 30 s after a call: make the next call at once
# and read the results afterwards (2026-12-03: a run of 9 minutes was lost while its partial results were read here).
# The processes are matched by the start of their command line, so the calling shell (whose command line may name
# them) is never waited on (2026-12-03: an unanchored pattern matched the call itself and idled 7 device minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
# /tmp/site: wheels carried to the machine (`prepare` installs them there)
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOGS="${LOGS:-/tmp/recurformer-logs}"
action="${1:-}"; shift || true
case "$action" in
  prepare)
    # everything a part needs, in the one call that carries the last asset piece (a call may find a fresh machine:
    # 2026-12-03 lost a session's plan to a wheel installed in a call whose machine never started): the wheels of
    # .whl/ (gguf: the model's GGUF conversion), the pieces joined and checked, the model fetched; stops at the
    # first failure, before any part starts
    [ -n "${1:-}" ] || { echo "usage: recurformer_parts.sh prepare PIECE_DIR (the last piece, assets.sh)" >&2; exit 2; }
    if compgen -G ".whl/*.whl" > /dev/null; then
      python3 -m pip install -q --no-deps --target /tmp/site .whl/*.whl
    fi
    bash benchmarks/gpu/assets.sh unpack "$1"
    python3 -m slimkv.cli.main fetch "${ASSET:-smollm2}" ;;
  start)
    [ -n "${PLAN:-}" ] || { echo "recurformer_parts.sh: set PLAN to the experiment flags every part shares" >&2; exit 2; }
    mkdir -p "$LOGS"
    for spec in "$@"; do
      out="${spec%%:*}"; variants="${spec#*:}"
      [ "$out" != "$spec" ] && [ -n "$variants" ] || { echo "recurformer_parts.sh: $spec is not OUT:VARIANT,..." >&2; exit 2; }
      # shellcheck disable=SC2086
      setsid nohup python3 -m slimkv.cli.main recurformer experiment --out "$out" --variants "$variants" $PLAN \
        > "$LOGS/$(basename "$out").log" 2>&1 < /dev/null &
      echo "started $out ($variants): pid $!, log $LOGS/$(basename "$out").log"
      sleep "${STAGGER_S:-15}"  # the first part builds the shared token shards; the others wait on its lock
    done ;;
  wait)
    secs="$1"; shift
    end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ] && pgrep -f "^python3 -m slimkv.cli.main recurformer experiment" > /dev/null; do sleep 10; done
    date -u +%T; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null || true
    echo "parts still running: $(pgrep -fc "^python3 -m slimkv.cli.main recurformer experiment" || true)"
    for out in "$@"; do
      echo "== $out"; tr '\r' '\n' < "$LOGS/$(basename "$out").log" | grep -v '^\s*$' | tail -3 | cut -c1-200 || true
      for metrics in "$out"/runs/*/metrics.jsonl; do
        [ -f "$metrics" ] && echo "$(basename "$(dirname "$metrics")"): $(tail -1 "$metrics" | cut -c1-160)"
      done
      # every row in one line each (what the output tail keeps if the archive is lost): ppl, passkey, bytes, decode
      [ -f "$out/results.json" ] && python3 -c "import json, sys
for name, row in json.load(open(sys.argv[1]))['rows'].items():
    print(name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                            if k in ('ppl', 'niah', 'hashhop_exact_match', 'cache_bytes')}, separators=(',', ':'))[:600],
          'decode', json.dumps(row.get('decode'))[:200])" "$out/results.json" || true
    done
    if [ -n "${OUT:-}" ]; then
      # one archive per part, and only the records --merge and the results page read (and which units each
      # conversion replaced, the learned gates: small, and what compares the selections): each converted model folder
      # holds a copy of the tokenizer (Qwen2.5's is 7 MB), and $OUT returns files of 16 MiB at most (2026-12-03: a
      # 26 MB archive of three Qwen parts did not come back and the run's records were lost with the machine)
      for out in "$@"; do
        [ -d "$out" ] || continue
        name="$(basename "$out")"
        (cd "$(dirname "$out")" && find "$name" -maxdepth 1 -type f \( -name '*.json' -o -name '*.md' -o -name '*.png' \) \
           && find "$name/runs" -mindepth 2 -maxdepth 2 -type f \( -name metrics.jsonl -o -name recurformer.json \) 2>/dev/null \
           && find "$name" -mindepth 2 -maxdepth 2 -type f -name conversion.json \
           && find "$name/runs" -mindepth 3 -maxdepth 3 -type f -name gates.json 2>/dev/null) \
          > "/tmp/$name.files"
        tar czf "$OUT/$name.tgz" -C "$(dirname "$out")" -T "/tmp/$name.files" \
          -C "$LOGS" "$name.log" 2>/dev/null || true
      done
      ls -l "$OUT"
    fi ;;
  *)
    echo "usage: recurformer_parts.sh prepare PIECE_DIR | start OUT:VARIANT,... ... | wait SECS OUT ..." >&2; exit 2 ;;
esac
