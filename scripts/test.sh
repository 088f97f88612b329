#!/usr/bin/env bash
# Runs every test (ctest) of a build folder with throwaway Redis and PostgreSQL servers on
# loopback, in a temporary folder that is removed afterwards.
#   scripts/test.sh [BUILD_DIR] [ctest args...]     (default build/release)
# The servers' addresses reach the tests as TEST_REDIS_URL and TEST_POSTGRES_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
shift || true

tmp=$(mktemp -d -t megaserve-test.XXXXXX)
source scripts/lib/throwaway.sh

cleanup() {
  set +e
  [[ -f $tmp/redis.pid ]] && kill "$(cat "$tmp/redis.pid")" 2>/dev/null
  pg_stop "$tmp"
  rm -rf "$tmp"
}
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
  --daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" ping >/dev/null || { echo "test: redis did not start" >&2; cat "$tmp/redis.log" >&2; exit 1; }

# Tests need no durability: fsync off makes them faster.
pg_start "$tmp" megaserve_test fsync=off

export TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export TEST_POSTGRES_URL="$pg_url"
echo "test: redis on $TEST_REDIS_URL, postgresql on $TEST_POSTGRES_URL"

# LeakSanitizer cannot stop libgomp's worker threads at exit (its tracer crashes), and libtorch
# starts them; in a sanitizer build libtorch runs its OpenMP work on the calling thread.
if grep -q '^MEGASERVE_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  export OMP_NUM_THREADS=1
fi

ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
