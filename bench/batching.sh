#!/usr/bin/env bash
# Dynamic batcher throughput, latency and per-request overhead (build/release/batching_bench).
#
# Runs:
#   1. Load: CLIENTS closed-loop client threads against one instance of a backend that
#      busy-waits 2 ms + 0.1 ms per item, with max_batch_size 32 and then 1. The ideal with
#      batch 32 is 32 / (2 + 3.2 ms) = 6154 req/s; with batch 1, 1 / 2.1 ms = 476 req/s.
#   2. Overhead: Google Benchmark of Submit -> backend -> result with a backend that does
#      nothing, on the calling thread (BM_PollMode) and across threads (BM_Threaded: 1, 8 or
#      32 client threads, 1 or 32 requests outstanding each, max_queue_delay 0 or 50 us). The
#      target is checked against the best wall time per request with 32 and with 1 request
#      outstanding per client thread; both include the hand-offs between client threads and
#      the worker (futex wake-ups, or spinning where a core is spare: wait_spin).
# Prints every run and a summary against the targets. Builds nothing.
#   bench/batching.sh [BUILD_DIR]      (default build/release)
# Environment: CLIENTS (64), RUN_SECONDS (5 per load run), DELAY_US (1000, max_queue_delay).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
bin=$build/batching_bench
clients=${CLIENTS:-64}
seconds=${RUN_SECONDS:-5}
delay_us=${DELAY_US:-1000}
[[ -x $bin ]] || { echo "missing $bin: run make release (or ninja -C $build batching_bench)" >&2; exit 1; }

tmp=$(mktemp -d -t megaserve-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

field() { grep -o "$1=[0-9.]*" <<<"$2" | tail -n 1 | cut -d= -f2; }
run() {  # label, batching_bench args... -> prints the run, sets $out
  echo "== $1" >&2
  shift
  out=$("$bin" "$@")
  echo "$out" >&2
}

echo "batching_bench: $(nproc) cores; backend busy-waits 2 ms + 0.1 ms/item on the steady clock" >&2
run "load, max_batch_size 32" load --clients "$clients" --seconds "$seconds" --max-batch 32 \
  --delay-us "$delay_us"
b32_rate=$(field req_per_s "$out"); b32_p50=$(field p50_ms "$out"); b32_p95=$(field p95_ms "$out")
run "load, max_batch_size 1" load --clients "$clients" --seconds "$seconds" --max-batch 1 \
  --delay-us "$delay_us"
b1_rate=$(field req_per_s "$out"); b1_p50=$(field p50_ms "$out"); b1_p95=$(field p95_ms "$out")

echo "== overhead (Google Benchmark)" >&2
"$bin" overhead --benchmark_out="$tmp/overhead.json" --benchmark_out_format=json >&2
# The best ns per request over the runs whose name starts with $1: field $2 of the JSON
# (wall_ns_per_req, cpu_ns_per_req), or 1e9 / items_per_second when the run has no such field.
ns_of() {
  python3 - "$tmp/overhead.json" "$1" "$2" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
key = sys.argv[3]
print(min(r.get(key, 1e9 / r["items_per_second"]) for r in runs if r["name"].startswith(sys.argv[2])))
PY
}
poll_ns=$(ns_of BM_PollMode wall_ns_per_req)
threaded1_ns=$(ns_of "BM_Threaded/1/" wall_ns_per_req)
threaded32_ns=$(ns_of "BM_Threaded/32/" wall_ns_per_req)
threaded32_cpu=$(ns_of "BM_Threaded/32/" cpu_ns_per_req)
threaded1_cpu=$(ns_of "BM_Threaded/1/" cpu_ns_per_req)
lone_ns=$(ns_of "BM_Threaded/1/0/real_time/threads:1" wall_ns_per_req)

ideal=6154
ratio_ideal=$(awk -v r="$b32_rate" -v i="$ideal" 'BEGIN {printf "%.2f", r / i}')
ratio_b1=$(awk -v a="$b32_rate" -v b="$b1_rate" 'BEGIN {printf "%.1f", (b > 0) ? a / b : 0}')
fmt() { awk -v v="$1" 'BEGIN {printf "%.0f", v}'; }

verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? v >= t : (op == "<=") ? v <= t : v < t; print ok ? "ok" : "MISS"}'; }
echo
printf '%-58s %12s %10s %6s\n' measurement value target ""
printf '%-58s %12s %10s %6s\n' "batch 32, req/s (ideal $ideal)" "$b32_rate" "" ""
printf '%-58s %12s %10s %6s\n' "batch 1, req/s (ideal 476)" "$b1_rate" "" ""
printf '%-58s %12s %10s %6s\n' "batch 32 throughput / ideal" "$ratio_ideal" ">= 0.80" "$(verdict "$ratio_ideal" ">=" 0.8)"
printf '%-58s %12s %10s %6s\n' "batch 32 / batch 1 throughput" "$ratio_b1" ">= 4" "$(verdict "$ratio_b1" ">=" 4)"
printf '%-58s %12s %10s %6s\n' "p95 ms, batch 32 (batch 1: $b1_p95)" "$b32_p95" "<= $b1_p95" "$(verdict "$b32_p95" "<=" "$b1_p95")"
printf '%-58s %12s %10s %6s\n' "overhead ns/request, threads, 32 outstanding each (best)" "$(fmt "$threaded32_ns")" "< 5000" "$(verdict "$threaded32_ns" "<" 5000)"
printf '%-58s %12s %10s %6s\n' "  same, process CPU ns/request" "$(fmt "$threaded32_cpu")" "" ""
printf '%-58s %12s %10s %6s\n' "overhead ns/request, threads, 1 outstanding each (best)" "$(fmt "$threaded1_ns")" "< 5000" "$(verdict "$threaded1_ns" "<" 5000)"
printf '%-58s %12s %10s %6s\n' "  same, process CPU ns/request" "$(fmt "$threaded1_cpu")" "" ""
printf '%-58s %12s %10s %6s\n' "  one client thread, one request at a time (round trip)" "$(fmt "$lone_ns")" "" ""
printf '%-58s %12s %10s %6s\n' "overhead ns/request, calling thread only (Poll mode)" "$(fmt "$poll_ns")" "" ""
echo "(p50 ms: batch 32 $b32_p50, batch 1 $b1_p50; $clients clients, max_queue_delay ${delay_us} us)"
