#!/usr/bin/env bash
# Two builds of the native forecast engine side by side (forecast_bench, INT8, one thread, the same
# random weights), interleaved round by round so that the machine's load falls on both alike:
#   bench/forecast_engine_ab.sh FORECAST_BENCH_A FORECAST_BENCH_B
# Each round times A, then B, at every batch size. Prints per round the microseconds per batch of
# each, and per batch size the median of the rounds' B / A ratios and how many rounds B was faster.
# Environment: ROUNDS (10), BATCHES (1,32), MIN_MS (500: time per case), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
(($# == 2)) || { sed -n '2,7p' "$0" >&2; exit 2; }
bins=("$1" "$2")
rounds=${ROUNDS:-10}
batches=${BATCHES:-1,32}
min_ms=${MIN_MS:-500}
threads=${THREADS:-1}
for b in "${bins[@]}"; do [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 2; }; done

source bench/lib.sh
scratch forecast-engine-ab
"${bins[0]}" --write-weights "$tmp/w.safetensors" --batches 1 --reps 1 --min-ms 0 >/dev/null
IFS=, read -r -a sizes <<<"$batches"
time_us() {  # binary batch -> microseconds per batch
  "$1" --model "$tmp/w.safetensors" --batches "$2" --threads "$threads" --precisions int8 \
    --min-ms "$min_ms" | awk '/^engine int8 batch/ {print $NF}'
}
echo "A: ${bins[0]}"
echo "B: ${bins[1]}"
printf '%-6s' round
for s in "${sizes[@]}"; do printf ' %12s %12s' "A b$s us" "B b$s us"; done
echo
declare -A ratios faster
for r in $(seq "$rounds"); do
  printf '%-6s' "$r"
  for s in "${sizes[@]}"; do
    a=$(time_us "${bins[0]}" "$s")
    b=$(time_us "${bins[1]}" "$s")
    printf ' %12s %12s' "$a" "$b"
    ratios[$s]+="$(ratio "$b" "$a") "
    if awk -v a="$a" -v b="$b" 'BEGIN {exit !(b < a)}'; then faster[$s]=$((${faster[$s]:-0} + 1)); fi
  done
  echo
done
for s in "${sizes[@]}"; do
  # shellcheck disable=SC2086  # the ratios are whitespace-separated numbers
  echo "batch $s: B / A per round ${ratios[$s]% }; median $(median ${ratios[$s]});" \
    "B faster in ${faster[$s]:-0} of $rounds rounds"
done
