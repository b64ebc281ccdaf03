#!/usr/bin/env bash
# Real assets onto a lent GPU machine that reaches no registry and takes at most 64 MiB per call (the device tool's
# README): pack the project's cached files here into xz-compressed pieces, carry one folder of pieces per call, and
# unpack them there into the same data/ layout, where the project's own fetch code finds them by their sha256.
#
#   here:  bash benchmarks/gpu/assets.sh pack .assets 56 data/downloads/smollm2-135m-instruct data/corpus data/reference
#          -> .assets/part-00 .. part-NN (each <= 56 MiB), .assets/manifest.sha256, and one folder per piece
#             (.assets/00, .assets/01, ...: its part and the manifest, hard links); carry one folder per call
#   there: bash benchmarks/gpu/assets.sh keep .assets/00            # a call before the last: copy its piece to /tmp
#          bash benchmarks/gpu/assets.sh unpack .assets/02          # the last call: join all pieces, check, extract
#
# The machine goes back 30 s after a call: make the calls back to back (each can do other work meanwhile).
# SmolLM2-135M (98 MB GGUF) + corpus + Debian text pack into about 117 MiB: two or three calls. A quantised GGUF
# hardly compresses: XZ_LEVEL=0 packs Qwen2.5-0.5B's 491 MB in 40 s instead of minutes, eight pieces of 59 MiB
# (2026-12-02). Two sets on one machine need two stores: SLIMKV_PIECES=/tmp/qwen-pieces on its keep and unpack.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE="${SLIMKV_PIECES:-/tmp/slimkv-pieces}"
case "${1:-}" in
  pack)
    out="$2"; mib="$3"; shift 3
    [ -e "$out" ] && { echo "assets.sh: $out exists; choose another folder" >&2; exit 2; }
    # a call carries the working tree with its piece, 64 MiB in all (2026-12-03: 59 MiB pieces beside a 6.7 MiB
    # tree were refused; leave 1 MiB for .whl)
    tree=$( { git ls-files -z 2>/dev/null || true; } | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
    if (( mib * 1048576 + tree > 63 * 1048576 )); then
      echo "assets.sh: pieces of $mib MiB beside the $((tree / 1048576)) MiB working tree exceed a call's 64 MiB;" \
           "use at most $(( (63 * 1048576 - tree) / 1048576 )) MiB" >&2; exit 2
    fi
    mkdir -p "$out"
    tar cf - "$@" | xz -T0 "-${XZ_LEVEL:-6}" | split -d -a 2 -b "${mib}M" - "$out/part-"
    (cd "$out" && sha256sum part-* > manifest.sha256)
    for part in "$out"/part-*; do
      piece="$out/${part##*-}"; mkdir "$piece"; ln "$part" "$out/manifest.sha256" "$piece"/
    done
    ls -l "$out" ;;
  keep)
    mkdir -p "$STORE"; cp "$2"/part-* "$2"/manifest.sha256 "$STORE"/ ; ls "$STORE" ;;
  unpack)
    mkdir -p "$STORE"; cp "$2"/part-* "$2"/manifest.sha256 "$STORE"/
    (cd "$STORE" && sha256sum -c --quiet manifest.sha256) || { echo "assets.sh: a piece is missing or corrupt" >&2; exit 2; }
    cat "$STORE"/part-* | xz -d | tar xf -
    echo "unpacked $(ls "$STORE"/part-* | wc -l) pieces into $PWD" ;;
  *)
    echo "usage: assets.sh pack OUT MIB PATH... | keep DIR | unpack DIR" >&2; exit 2 ;;
esac
