#!/usr/bin/env bash
# Heap allocations per uncached forecast (POST /v1/forecasts, batching on), for one or more
# builds: a count that does not swing with the machine's load, unlike time. Each build serves
# the same model and candles with a preloaded library that counts malloc calls (operator new
# comes through malloc); the script runs each server twice, once with a warm-up alone and once
# with the warm-up and a wrk run, and divides the difference in calls and bytes by the
# difference in requests served (from /metrics).
#   bench/forecast_allocs.sh BINARY...
# Environment: MODEL (required: a trained forecast model folder), DURATION (3s), CONNECTIONS
#   (64), DATA (the 4h candles file).
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 1)) || { sed -n '2,10p' "$0" >&2; exit 2; }
duration=${DURATION:-3s}
conns=${CONNECTIONS:-64}
data=${DATA:-../shared/data/btcusdt_spot_4h.csv}
[[ -n ${MODEL:-} && -d ${MODEL:-} ]] || { echo "MODEL must name a trained model folder" >&2; exit 2; }
for b in "$@"; do [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 2; }; done
for tool in wrk curl cc; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
[[ -f $data ]] || { echo "missing $data (the 4h BTCUSDT candles)" >&2; exit 1; }

source scripts/lib/throwaway.sh
source bench/lib.sh
scratch forecast-allocs

cat > "$tmp/count.c" <<'C'
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
extern void *__libc_malloc(size_t);
static atomic_long calls, bytes;
void *malloc(size_t n) {
  atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&bytes, (long)n, memory_order_relaxed);
  return __libc_malloc(n);
}
__attribute__((destructor)) static void report(void) {
  const char *path = getenv("ALLOC_COUNT_FILE");
  FILE *f = path ? fopen(path, "w") : NULL;
  if (f) { fprintf(f, "%ld %ld\n", (long)calls, (long)bytes); fclose(f); }
}
C
cc -O2 -shared -fPIC -o "$tmp/count.so" "$tmp/count.c"

forecast_fixture "$1" "$tmp/store" >/dev/null
mkdir -p "$tmp/store/models"
cp -r "$MODEL" "$tmp/store/models/btcusdt-4h"

served() {  # port -> forecasts answered 200
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^megaserve_http_requests_total\{route="\/v1\/forecasts"/ &&
    /code="200"/ {s += $2} END {print s + 0}'
}
run() {  # binary measure(0|1) -> "requests calls bytes"
  local port pid n
  rm -rf "$tmp/home"
  cp -r "$tmp/store" "$tmp/home"
  port=$(free_port)
  ALLOC_COUNT_FILE=$tmp/count.txt LD_PRELOAD=$tmp/count.so MEGASERVE_LOG_ACCESS=false "$1" serve \
    --config "$tmp/uncached.toml" --listen "127.0.0.1:$port" --data-dir "$tmp/home" \
    2>"$tmp/server.log" &
  pid=$!
  pids+=("$pid")
  wait_ready "$pid" "$port" "$tmp/server.log"
  wrk_checked -t1 -c"$conns" -d1s -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/forecasts" \
    >/dev/null || exit 1
  if [[ $2 == 1 ]]; then
    wrk_checked -t1 -c"$conns" -d"$duration" -s "$tmp/post.lua" \
      "http://127.0.0.1:$port/v1/forecasts" >/dev/null || exit 1
  fi
  n=$(served "$port")
  kill "$pid"
  wait "$pid" || true
  echo "$n $(cat "$tmp/count.txt")"
}
printf '%-50s %14s %14s\n' build "allocs/request" "bytes/request"
for b in "$@"; do
  read -r n0 c0 b0 <<<"$(run "$b" 0)"
  read -r n1 c1 b1 <<<"$(run "$b" 1)"
  awk -v name="$b" -v n=$((n1 - n0)) -v c=$((c1 - c0)) -v by=$((b1 - b0)) \
    'BEGIN {printf "%-50s %14.2f %14.0f\n", name, c / n, by / n}'
done
