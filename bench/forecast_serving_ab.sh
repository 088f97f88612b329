#!/usr/bin/env bash
# Two builds of megaserve side by side on the uncached forecast path (POST /v1/forecasts with the
# model's batcher on, as bench/forecast.sh's "batching on"), interleaved round by round so that
# the machine's load falls on both alike:
#   bench/forecast_serving_ab.sh BINARY_A BINARY_B
# Each round runs wrk against A, then against B, and reads from /proc the CPU time each server
# used. Prints per round and as medians: requests/s, the server's CPU microseconds per request,
# and B's figures over A's.
# Environment: MODEL (required: a trained forecast model folder, e.g. one written by
#   `megaserve train forecast`; backtest it first for answers that carry its skill, as in
#   bench/forecast.sh), ROUNDS (8), DURATION (3s), CONNECTIONS (64), DATA (the 4h
#   candles file).
set -euo pipefail
cd "$(dirname "$0")/.."
(($# == 2)) || { sed -n '2,12p' "$0" >&2; exit 2; }
bins=("$1" "$2")
rounds=${ROUNDS:-8}
duration=${DURATION:-3s}
conns=${CONNECTIONS:-64}
data=${DATA:-../shared/data/btcusdt_spot_4h.csv}
[[ -n ${MODEL:-} && -d ${MODEL:-} ]] || { echo "MODEL must name a trained model folder" >&2; exit 2; }
for b in "${bins[@]}"; do [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 2; }; done
command -v wrk >/dev/null || { echo "missing wrk: run scripts/setup.sh" >&2; exit 1; }
[[ -f $data ]] || { echo "missing $data (the 4h BTCUSDT candles)" >&2; exit 1; }
ticks=$(getconf CLK_TCK)

source scripts/lib/throwaway.sh
source bench/lib.sh
scratch forecast-ab

home=$tmp/serve
mkdir -p "$home/models"
forecast_fixture "${bins[0]}" "$home" >/dev/null
cp -r "$MODEL" "$home/models/btcusdt-4h"
ports=()
for i in 0 1; do
  port=$(free_port)
  # Each server gets its own copy of the job store: both read the same candles.
  mkdir -p "$tmp/home$i"
  cp -r "$home/." "$tmp/home$i/"
  MEGASERVE_LOG_ACCESS=false "${bins[$i]}" serve --config "$tmp/uncached.toml" \
    --listen "127.0.0.1:$port" --data-dir "$tmp/home$i" 2>"$tmp/server$i.log" &
  pids+=("$!")
  wait_ready "$!" "$port" "$tmp/server$i.log"
  ports+=("$port")
  wrk -t1 -c"$conns" -d1s -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/forecasts" >/dev/null
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system
measure() {  # index -> "requests/s cpu-us-per-request"
  local before after out rps total
  before=$(cpu_ticks "${pids[$1]}")
  out=$(wrk_checked -t1 -c"$conns" -d"$duration" -s "$tmp/post.lua" \
    "http://127.0.0.1:${ports[$1]}/v1/forecasts") || exit 1
  after=$(cpu_ticks "${pids[$1]}")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$rps" -v n="$total" -v t=$((after - before)) -v hz="$ticks" \
    'BEGIN {printf "%s %.1f", r, t * 1e6 / hz / n}'
}
echo "A: ${bins[0]}"
echo "B: ${bins[1]}"
printf '%-6s %12s %12s %14s %14s\n' round "A req/s" "B req/s" "A cpu us/req" "B cpu us/req"
declare -a rps_ratio cpu_ratio a_rps b_rps a_cpu b_cpu
for r in $(seq "$rounds"); do
  a=$(measure 0) || exit 1
  b=$(measure 1) || exit 1
  read -r ar ac <<<"$a"
  read -r br bc <<<"$b"
  printf '%-6s %12s %12s %14s %14s\n' "$r" "$ar" "$br" "$ac" "$bc"
  a_rps+=("$ar"); b_rps+=("$br"); a_cpu+=("$ac"); b_cpu+=("$bc")
  rps_ratio+=("$(ratio "$br" "$ar")"); cpu_ratio+=("$(ratio "$bc" "$ac")")
done
echo "medians: A $(median "${a_rps[@]}") req/s, $(median "${a_cpu[@]}") cpu us/req;" \
  "B $(median "${b_rps[@]}") req/s, $(median "${b_cpu[@]}") cpu us/req"
echo "B / A per round: req/s ${rps_ratio[*]}; cpu us/req ${cpu_ratio[*]}"
echo "B / A (median of rounds): req/s $(median "${rps_ratio[@]}"), cpu us/req $(median "${cpu_ratio[@]}")"
