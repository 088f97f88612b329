#!/usr/bin/env bash
# Job-queue throughput and latency (build/release/jobs_throughput) on a throwaway PostgreSQL on
# loopback with durable commits (synchronous_commit=on, fsync on), and on a SQLite file.
#
# Runs, each on an emptied jobs table:
#   1. PostgreSQL unbatched: every job enqueued by its own Enqueue call, claimed by its own
#      Claim(.., 1) and acked by its own Complete. Concurrent calls share statements (JobQueue's
#      coalescing, group commit); the same run with --no-coalesce follows for comparison.
#   2. PostgreSQL batched: claims of 32 acked in one statement (CompleteMany), enqueues of 32
#      (EnqueueMany); and the same claims and acks with single enqueues.
#   3. SQLite unbatched.
#   4. PostgreSQL unbatched, paced at half of run 1's rate: p50 enqueue->claim latency.
# Prints every run and a summary against the targets.
#   bench/jobs_throughput.sh [BUILD_DIR]      (default build/release)
# Environment: JOBS (8000 per unbatched run; batched runs use 3x), PG_WORKERS (16),
# PG_PRODUCERS (16), SQLITE_WORKERS (16), SQLITE_PRODUCERS (8), BATCH (32).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
bin=$build/jobs_throughput
jobs=${JOBS:-8000}
pg_workers=${PG_WORKERS:-16}
pg_producers=${PG_PRODUCERS:-16}
sq_workers=${SQLITE_WORKERS:-16}
sq_producers=${SQLITE_PRODUCERS:-8}
batch=${BATCH:-32}
[[ -x $bin ]] || { echo "missing $bin: run make release (or ninja -C $build jobs_throughput)" >&2; exit 1; }

tmp=$(mktemp -d -t megaserve-bench.XXXXXX)
source scripts/lib/throwaway.sh
cleanup() {
  set +e
  pg_stop "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT

# Stock durability: synchronous_commit=on and fsync on, so every commit waits for its WAL flush.
pg_start "$tmp" megaserve_bench synchronous_commit=on
sqlite_dir="$tmp/sqlite"
mkdir -p "$sqlite_dir"
sqlite_url="sqlite://$sqlite_dir/bench.db"

field() { grep -o "$1=[0-9.]*" <<<"$2" | tail -n 1 | cut -d= -f2; }
run() {  # label, jobs_throughput args... -> prints the run, sets $out
  echo "== $1" >&2
  shift
  out=$("$bin" "$@")
  grep -v '^result ' <<<"$out" >&2
}

pg_version=$("$(_pg_bin)/postgres" --version | awk '{print $3}')
echo "jobs_throughput: noop jobs, $(nproc) cores; PostgreSQL $pg_version over TCP loopback" \
  "(synchronous_commit=on, fsync=on), SQLite WAL (synchronous=NORMAL)" >&2

run "PostgreSQL unbatched (enqueue 1, claim 1, ack 1)" --url "$pg_url" --jobs "$jobs" \
  --workers "$pg_workers" --producers "$pg_producers" --batch 1
pg1_rate=$(field jobs_per_s "$out"); pg1_p50=$(field p50_ms "$out")
run "PostgreSQL unbatched, no coalescing (every call its own statement)" --url "$pg_url" \
  --jobs "$jobs" --workers "$pg_workers" --producers "$pg_producers" --batch 1 --no-coalesce
pgn_rate=$(field jobs_per_s "$out")
run "PostgreSQL batched (enqueue $batch, claim $batch, ack $batch)" --url "$pg_url" \
  --jobs $((jobs * 3)) --workers 4 --producers 4 --batch "$batch" --enqueue-batch "$batch"
pgb_rate=$(field jobs_per_s "$out")
run "PostgreSQL batched claim and ack, single enqueues (claim $batch, ack $batch)" --url "$pg_url" \
  --jobs $((jobs * 2)) --workers 4 --producers "$pg_producers" --batch "$batch"
pgb1_rate=$(field jobs_per_s "$out")
run "SQLite unbatched (enqueue 1, claim 1, ack 1)" --url "$sqlite_url" --jobs "$jobs" \
  --workers "$sq_workers" --producers "$sq_producers" --batch 1
sq_rate=$(field jobs_per_s "$out")
half=$(awk -v r="$pg1_rate" 'BEGIN {printf "%d", r / 2}')
(( half >= 1 )) || half=1
# About 5 s of paced load, at least 500 jobs.
half_jobs=$(awk -v r="$half" 'BEGIN {m = int(r * 5); if (m < 500) m = 500; print m}')
run "PostgreSQL unbatched paced at half peak ($half jobs/s)" --url "$pg_url" --jobs "$half_jobs" \
  --workers "$pg_workers" --producers "$pg_producers" --batch 1 --rate "$half"
half_p50=$(field p50_ms "$out"); half_rate=$(field jobs_per_s "$out")

verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? v >= t : v < t; print ok ? "ok" : "MISS"}'; }
echo
printf '%-58s %12s %10s %6s\n' measurement value target ""
printf '%-58s %12s %10s %6s\n' "PostgreSQL unbatched, jobs/s" "$pg1_rate" ">= 2000" "$(verdict "$pg1_rate" ">=" 2000)"
printf '%-58s %12s %10s %6s\n' "PostgreSQL unbatched without coalescing, jobs/s" "$pgn_rate" "" ""
printf '%-58s %12s %10s %6s\n' "PostgreSQL batched claim/ack (+ batched enqueue), jobs/s" "$pgb_rate" ">= 5000" "$(verdict "$pgb_rate" ">=" 5000)"
printf '%-58s %12s %10s %6s\n' "PostgreSQL batched claim/ack, single enqueues, jobs/s" "$pgb1_rate" "" ""
printf '%-58s %12s %10s %6s\n' "SQLite unbatched, jobs/s" "$sq_rate" ">= 2000" "$(verdict "$sq_rate" ">=" 2000)"
printf '%-58s %12s %10s %6s\n' "PostgreSQL p50 enqueue->claim at $half jobs/s, ms" "$half_p50" "< 5" "$(verdict "$half_p50" "<" 5)"
echo "(unbatched p50 at peak: $pg1_p50 ms; paced run completed $half_rate jobs/s)"
