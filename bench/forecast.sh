#!/usr/bin/env bash
# The forecasting service against its anchors, all in one run on one machine:
#   engine    the native LSTM engine (INT8 and FP32) against PyTorch's nn.LSTM + nn.Linear (FP32,
#             Debian's python3-torch) with the same shape and weights, batch 1 and batch 32
#   model     the default model trained on the 4h BTCUSDT candles (train <= 2023, validate 2024)
#             and backtested on 2025, next to naive persistence on 2024-2025
#   batching  uncached POST /v1/forecasts with CONNECTIONS concurrent clients, the model's
#             batcher on (max_batch_size 32) against off (max_batch_size 1)
#   cached    POST /v1/forecasts answered by the response cache against GET /v1/status
# Throughput pairs run back to back ROUNDS times, in the opposite order every other round, the
# engine against PyTorch ENGINE_ROUNDS times; each ratio is the median of the rounds' ratios.
# On a shared machine one round's ratio can be off by 15% either way even when its two halves run
# a second apart, so the pairs are many and short rather than few and long.
#   bench/forecast.sh [BUILD_DIR]      (default build/release)
# Environment: ROUNDS (15), ENGINE_ROUNDS (5), DURATION (1s), CONNECTIONS (64), DATA (the 4h
#   candles file),
#   MODEL (an already trained model folder: skips training), EPOCHS (the trainer's default).
# PyTorch runs with its own OpenBLAS settings: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset
# for it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
bin=$build/megaserve
rounds=${ROUNDS:-15}
engine_rounds=${ENGINE_ROUNDS:-5}
duration=${DURATION:-1s}
conns=${CONNECTIONS:-64}
data=${DATA:-../shared/data/btcusdt_spot_4h.csv}
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
[[ -f $data ]] || { echo "missing $data (the 4h BTCUSDT candles)" >&2; exit 1; }
cmake --build "$build" --target megaserve forecast_bench >/dev/null
[[ -x $bin && -x $build/forecast_bench ]] || { echo "missing $bin or forecast_bench" >&2; exit 1; }

source scripts/lib/throwaway.sh
source bench/lib.sh
scratch forecast-bench
verdict() { awk -v x="$1" -v t="$2" 'BEGIN {print (x >= t) ? "ok" : "MISSED"}'; }
summary=()
report() {  # label value target
  local line
  line=$(printf '%-58s %8s  >= %-6s %s' "$1" "$2" "$3" "$(verdict "$2" "$3")")
  summary+=("$line")
  echo "$line"
}

echo "== engine: native LSTM vs PyTorch nn.LSTM (same weights; $(nproc) cores) =="
# ENGINE_ROUNDS rounds, each timing the engine and then PyTorch (every batch size and thread
# count); a round's ratio compares the two measured back to back, and the reported ratio is the
# median of the rounds', as for the throughput pairs below: a burst of load from elsewhere then
# skews one round, not the result.
"$build/forecast_bench" --write-weights "$tmp/bench.safetensors" --batches 1 --reps 1 \
  --min-ms 0 >/dev/null
us() {  # file who precision batch threads -> median us (one-thread lines may omit "threads 1")
  awk -v k="$2 $3 batch $4 threads $5 us" -v k1="$2 $3 batch $4 us" -v n="$5" \
    'index($0, k) == 1 || (n == 1 && index($0, k1) == 1) {print $NF}' "$1" | head -n 1
}
fastest() { printf '%s\n' "$@" | sort -g | head -n 1; }
declare -a engine_b1 engine_b32
for r in $(seq "$engine_rounds"); do
  "$build/forecast_bench" --model "$tmp/bench.safetensors" --threads 1,2 > "$tmp/engine.txt"
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/forecast_torch.py \
    --weights "$tmp/bench.safetensors" --threads 1,2 > "$tmp/torch.txt"
  if [[ $r == 1 ]]; then
    grep -h -E '^(engine kernel|torch version)' "$tmp/engine.txt" "$tmp/torch.txt"
  fi
  for b in 1 32; do
    e1=$(us "$tmp/engine.txt" engine int8 "$b" 1); e2=$(us "$tmp/engine.txt" engine int8 "$b" 2)
    f1=$(us "$tmp/engine.txt" engine fp32 "$b" 1)
    t1=$(us "$tmp/torch.txt" torch fp32 "$b" 1); t2=$(us "$tmp/torch.txt" torch fp32 "$b" 2)
    [[ -n $e1 && -n $e2 && -n $f1 && -n $t1 && -n $t2 ]] ||
      { echo "timings missing for batch $b" >&2; cat "$tmp/engine.txt" "$tmp/torch.txt" >&2; exit 1; }
    e=$(fastest "$e1" "$e2"); t=$(fastest "$t1" "$t2")
    echo "round $r batch $b: engine int8 $e1 us (1 thread) / $e2 us (2), fp32 $f1 us (1);" \
      "PyTorch fp32 $t1 us (1) / $t2 us (2); best/best $(ratio "$t" "$e")x," \
      "one thread each: int8 $(ratio "$t1" "$e1")x, fp32 $(ratio "$t1" "$f1")x"
    if [[ $b == 1 ]]; then engine_b1+=("$(ratio "$t" "$e")"); else engine_b32+=("$(ratio "$t" "$e")"); fi
  done
done
echo "rounds: batch 1 ${engine_b1[*]}; batch 32 ${engine_b32[*]}"
report "INT8 engine speed-up over PyTorch FP32, batch 1 (each at its best)" \
  "$(median "${engine_b1[@]}")" 50
report "INT8 engine speed-up over PyTorch FP32, batch 32 (each at its best)" \
  "$(median "${engine_b32[@]}")" 5

echo
echo "== model: train, backtest =="
home=$tmp/serve
mkdir -p "$home/models"
forecast_fixture "$bin" "$home"  # the candles, $tmp/uncached.toml and $tmp/post.lua
if [[ -n ${MODEL:-} ]]; then
  cp -r "$MODEL" "$home/models/btcusdt-4h"
  echo "model: $MODEL (not retrained)"
else
  start_s=$(date +%s)
  "$bin" train forecast --data "$data" --symbol BTCUSDT --interval 4h --train-until 2023-12-31 \
    --validate-until 2024-12-31 --name btcusdt-4h --models-dir "$home/models" \
    ${EPOCHS:+--epochs "$EPOCHS"} --quiet
  echo "training took $(( $(date +%s) - start_s )) s"
fi
"$bin" backtest --model "$home/models/btcusdt-4h" --data "$data" --from 2025-01-01 \
  --to 2025-12-31 --json "$tmp/backtest.json"
echo "naive persistence and drift on 2024-01-01 .. 2025-12-31 (the README's 557 USD MAE at 4h):"
"$bin" backtest --baseline-only --data "$data" --interval 4h --horizon 6 --from 2024-01-01 \
  --to 2025-12-31

echo
echo "== serving: batching on vs off (uncached), cached vs /v1/status =="
# Batching off: the same model with max_batch_size = 1.
off=$tmp/serve-off
mkdir -p "$off/models"
cp "$home/megaserve.db" "$off/" 2>/dev/null || "$bin" data import "$data" --symbol BTCUSDT \
  --interval 4h --data-dir "$off" >/dev/null
cp -r "$home/models/btcusdt-4h" "$off/models/"
sed -i 's/^max_batch_size *=.*/max_batch_size = 1/' "$off/models/btcusdt-4h/config.toml"
grep -q '^max_batch_size = 1' "$off/models/btcusdt-4h/config.toml" ||
  { echo "could not turn batching off in the copied config.toml" >&2; exit 1; }
# The cached server keeps the built-in filters of /v1/forecasts* (auth, rate limit, cache) but
# lifts the rate limit: at its default (gateway.rate_limit per client) nearly every request of
# one wrk client would be a 429, and /v1/status, the anchor, has no limit.
cat > "$tmp/cached.toml" <<CONF
[[routes]]
pattern = "/v1/forecasts*"
filters = ["auth", "rate_limit", "cache"]
scope = "forecasts"
rate_limit = ""
cache_ttl = "5m"
cache_post = true
CONF
start() {  # name port config-file data-dir
  local name=$1 port=$2
  MEGASERVE_LOG_ACCESS=false "$bin" serve --config "$3" --listen "127.0.0.1:$port" \
    --data-dir "$4" 2>"$tmp/$name.log" &
  pids+=("$!")
  wait_ready "$!" "$port" "$tmp/$name.log"
}
onport=$(free_port); offport=$(free_port); cport=$(free_port)
start on "$onport" "$tmp/uncached.toml" "$home"
start off "$offport" "$tmp/uncached.toml" "$off"
start cached "$cport" "$tmp/cached.toml" "$home"
body='{"symbol":"BTCUSDT","interval":"4h","horizon":6}'
for port in "$onport" "$offport" "$cport"; do
  code=$(curl -s -o "$tmp/check.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$body" "http://127.0.0.1:$port/v1/forecasts")
  [[ $code == 200 ]] || { echo "POST /v1/forecasts on $port: HTTP $code: $(cat "$tmp/check.out")" >&2; exit 1; }
done
echo "one forecast:"; cat "$tmp/check.out"; echo
run_wrk() {  # url [wrk args] -> requests/s; any non-2xx answer stops the script
  local url=$1 out; shift
  out=$(wrk_checked -t1 -c"$conns" -d"$duration" "$@" "$url") || exit 1
  awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}
for url in "http://127.0.0.1:$onport/v1/forecasts" "http://127.0.0.1:$offport/v1/forecasts" \
           "http://127.0.0.1:$cport/v1/forecasts"; do
  wrk -t1 -c"$conns" -d1s -s "$tmp/post.lua" "$url" >/dev/null  # warm-up
done
declare -a on_off cached_status
printf '%-6s %14s %14s %14s %14s\n' round "batching on" "batching off" "cached" "/v1/status"
for r in $(seq "$rounds"); do
  # Odd rounds measure each pair's first member first, even rounds its second.
  if ((r % 2)); then
    a=$(run_wrk "http://127.0.0.1:$onport/v1/forecasts" -s "$tmp/post.lua")
    b=$(run_wrk "http://127.0.0.1:$offport/v1/forecasts" -s "$tmp/post.lua")
    c=$(run_wrk "http://127.0.0.1:$cport/v1/forecasts" -s "$tmp/post.lua")
    s=$(run_wrk "http://127.0.0.1:$cport/v1/status")
  else
    b=$(run_wrk "http://127.0.0.1:$offport/v1/forecasts" -s "$tmp/post.lua")
    a=$(run_wrk "http://127.0.0.1:$onport/v1/forecasts" -s "$tmp/post.lua")
    s=$(run_wrk "http://127.0.0.1:$cport/v1/status")
    c=$(run_wrk "http://127.0.0.1:$cport/v1/forecasts" -s "$tmp/post.lua")
  fi
  printf '%-6s %14s %14s %14s %14s\n' "$r" "$a" "$b" "$c" "$s"
  on_off+=("$(ratio "$a" "$b")")
  cached_status+=("$(ratio "$c" "$s")")
done
hits=$(curl -s "http://127.0.0.1:$cport/metrics" |
  awk '/^megaserve_cache_requests_total\{.*route="\/v1\/forecasts".*result="hit"/ {s += $2} END {print s + 0}')
echo "cache hits on /v1/forecasts (cached server): $hits"
mean_batch() {  # port -> mean batch size the model's batcher formed
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^megaserve_inference_batch_size_sum/ {s = $2}
    /^megaserve_inference_batch_size_count/ {n = $2} END {printf "%.1f", n ? s / n : 0}'
}
echo "mean batch size: batching on $(mean_batch "$onport"), off $(mean_batch "$offport")"
echo "rounds: on/off ${on_off[*]}; cached/status ${cached_status[*]}"
report "uncached forecasts, batching on / off ($conns clients)" "$(median "${on_off[@]}")" 4
report "cached forecast / GET /v1/status" "$(median "${cached_status[@]}")" 0.9

echo
echo "== summary =="
printf '%s\n' "${summary[@]}"
