#!/usr/bin/env bash
# Job-queue throughput and latency (build/release/jobs_throughput) on a throwaway PostgreSQL on
# loopback, with durable commits (synchronous_commit=on, fsync on), and on a SQLite file.
#
# Runs, each on an emptied jobs table: PostgreSQL unbatched (claim 1, ack 1), PostgreSQL batched
# (claim 32, then 32 single acks: JobQueue has no batched ack), SQLite unbatched, and PostgreSQL
# paced at half the unbatched peak for the p50 enqueue->claim latency. Prints every run and a
# summary against the targets.
#   bench/jobs_throughput.sh [BUILD_DIR]      (default build/release)
# Environment: JOBS (5000 per run), WORKERS (4), PRODUCERS (2), BATCH (32).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
bin=$build/jobs_throughput
jobs=${JOBS:-5000}
workers=${WORKERS:-4}
producers=${PRODUCERS:-2}
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
  out=$("$bin" --producers "$producers" --workers "$workers" "$@")
  grep -v '^result ' <<<"$out" >&2
}

pg_version=$("$(_pg_bin)/postgres" --version | awk '{print $3}')
echo "jobs_throughput: $jobs noop jobs per run, $producers producers, $workers workers, $(nproc) cores;" \
  "PostgreSQL $pg_version (synchronous_commit=on, fsync=on), SQLite WAL" >&2

run "PostgreSQL unbatched (claim 1, ack 1)" --url "$pg_url" --jobs "$jobs" --batch 1
pg1_rate=$(field jobs_per_s "$out"); pg1_p50=$(field p50_ms "$out")
run "PostgreSQL batched (claim $batch, then $batch single acks: JobQueue has no batched ack)" \
  --url "$pg_url" --jobs "$jobs" --batch "$batch"
pgb_rate=$(field jobs_per_s "$out")
run "SQLite unbatched (claim 1, ack 1)" --url "$sqlite_url" --jobs "$jobs" --batch 1
sq_rate=$(field jobs_per_s "$out")
half=$(awk -v r="$pg1_rate" 'BEGIN {printf "%d", r / 2}')
(( half >= 1 )) || half=1
# About 10 s of paced load at most, at least 500 jobs.
half_jobs=$(awk -v r="$half" -v n="$jobs" 'BEGIN {m = int(r * 10); if (m > n) m = n; if (m < 500) m = 500; print m}')
run "PostgreSQL unbatched paced at half peak ($half jobs/s)" --url "$pg_url" --jobs "$half_jobs" \
  --batch 1 --rate "$half"
half_p50=$(field p50_ms "$out"); half_rate=$(field jobs_per_s "$out")

verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? v >= t : v < t; print ok ? "ok" : "MISS"}'; }
echo
printf '%-52s %14s %12s %6s\n' measurement value target ""
printf '%-52s %14s %12s %6s\n' "PostgreSQL unbatched, jobs/s" "$pg1_rate" ">= 2000" "$(verdict "$pg1_rate" ">=" 2000)"
printf '%-52s %14s %12s %6s\n' "PostgreSQL batched (claim $batch, single acks), jobs/s" "$pgb_rate" ">= 5000" "$(verdict "$pgb_rate" ">=" 5000)"
printf '%-52s %14s %12s %6s\n' "SQLite unbatched, jobs/s" "$sq_rate" ">= 2000" "$(verdict "$sq_rate" ">=" 2000)"
printf '%-52s %14s %12s %6s\n' "PostgreSQL p50 enqueue->claim at $half jobs/s, ms" "$half_p50" "< 5" "$(verdict "$half_p50" "<" 5)"
echo "(unbatched p50 at peak: $pg1_p50 ms; paced run completed $half_rate jobs/s)"
