#!/usr/bin/env bash
# Batching settings of a forecast model across client counts: uncached POST /v1/forecasts
# against one server per setting (the same build, model and candles; only the [batching] table
# of the model's config.toml differs), every setting measured at every client count in each
# round, rounds repeated so that the machine's swings fall on all settings alike.
#   bench/forecast_batching.sh [BINARY]      (default build/release/megaserve)
# Prints, per client count and setting, the medians over the rounds of requests/s and of wrk's
# p50 and p99 latency.
# Environment: MODEL (required: a trained forecast model folder), SETTINGS (settings separated
#   by '|', each written as below; default: the list below), CLIENTS ("1 8 16 32 64 128"),
#   ROUNDS (3), DURATION (3s), DATA (the 4h candles file).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/release/megaserve}
clients=${CLIENTS:-1 8 16 32 64 128}
rounds=${ROUNDS:-3}
duration=${DURATION:-3s}
data=${DATA:-../shared/data/btcusdt_spot_4h.csv}
# Each setting: a name, '=', and the [batching] table's lines joined by ';'. By default: what
# `megaserve train forecast` writes, the 2 ms delay it wrote before, no delay at all, and a
# preferred size of 8 as well as 16.
default_settings=(
  'default=max_batch_size = 32;preferred_batch_sizes = [16];max_queue_delay = "250us"'
  'delay-2ms=max_batch_size = 32;max_queue_delay = "2ms"'
  'no-delay=max_batch_size = 32;max_queue_delay = "0us"'
  'pref-8-16=max_batch_size = 32;preferred_batch_sizes = [8, 16];max_queue_delay = "250us"'
)
if [[ -n ${SETTINGS:-} ]]; then
  IFS='|' read -r -a settings <<<"$SETTINGS"
else
  settings=("${default_settings[@]}")
fi
[[ -n ${MODEL:-} && -d ${MODEL:-} ]] || { echo "MODEL must name a trained model folder" >&2; exit 2; }
[[ -x $bin ]] || { echo "not an executable: $bin" >&2; exit 2; }
command -v wrk >/dev/null || { echo "missing wrk: run scripts/setup.sh" >&2; exit 1; }
[[ -f $data ]] || { echo "missing $data (the 4h BTCUSDT candles)" >&2; exit 1; }

source scripts/lib/throwaway.sh
source bench/lib.sh
scratch forecast-batching

forecast_fixture "$bin" "$tmp/store" >/dev/null
names=()
ports=()
for i in "${!settings[@]}"; do
  name=${settings[$i]%%=*}
  lines=${settings[$i]#*=}
  names+=("$name")
  home=$tmp/home$i
  mkdir -p "$home/models"
  cp -r "$tmp/store/." "$home/"
  cp -r "$MODEL" "$home/models/btcusdt-4h"
  # The model's own [batching] table is replaced by the setting's.
  sed -i '/^\[batching\]/,$d' "$home/models/btcusdt-4h/config.toml"
  { echo "[batching]"; tr ';' '\n' <<<"$lines"; echo; } >> "$home/models/btcusdt-4h/config.toml"
  port=$(free_port)
  MEGASERVE_LOG_ACCESS=false "$bin" serve --config "$tmp/uncached.toml" \
    --listen "127.0.0.1:$port" --data-dir "$home" 2>"$tmp/server$i.log" &
  pids+=("$!")
  wait_ready "$!" "$port" "$tmp/server$i.log"
  ports+=("$port")
  code=$(curl -s -o "$tmp/check.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"symbol":"BTCUSDT","interval":"4h","horizon":6}' "http://127.0.0.1:$port/v1/forecasts")
  [[ $code == 200 ]] || { echo "setting $name: HTTP $code: $(cat "$tmp/check.out")" >&2; exit 1; }
  wrk -t1 -c64 -d1s -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/forecasts" >/dev/null
done

ms() {  # a wrk latency ("812.00us", "1.23ms", "1.01s") -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}
declare -A rps p50 p99
for r in $(seq "$rounds"); do
  for c in $clients; do
    for i in "${!names[@]}"; do
      out=$(wrk_checked -t1 -c"$c" -d"$duration" --latency -s "$tmp/post.lua" \
        "http://127.0.0.1:${ports[$i]}/v1/forecasts") || exit 1
      rps[$c,$i]+=" $(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
      p50[$c,$i]+=" $(ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
      p99[$c,$i]+=" $(ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
    done
  done
  echo "round $r of $rounds done" >&2
done

echo "medians over $rounds rounds of $duration (requests/s, p50 ms, p99 ms):"
for i in "${!names[@]}"; do echo "  ${names[$i]}: ${settings[$i]#*=}"; done
printf '%-8s %-22s %12s %10s %10s\n' clients setting "req/s" "p50 ms" "p99 ms"
for c in $clients; do
  for i in "${!names[@]}"; do
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    printf '%-8s %-22s %12s %10s %10s\n' "$c" "${names[$i]}" "$(median ${rps[$c,$i]})" \
      "$(median ${p50[$c,$i]})" "$(median ${p99[$c,$i]})"
  done
done
