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
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
  # PostgreSQL refuses to run as root; its files and processes belong to the postgres user.
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  set +e
  [[ -f $tmp/redis.pid ]] && kill "$(cat "$tmp/redis.pid")" 2>/dev/null
  [[ -d $tmp/pg ]] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
  --daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" ping >/dev/null || { echo "test: redis did not start" >&2; cat "$tmp/redis.log" >&2; exit 1; }

pg_port=$(free_port)
mkdir -p "$tmp/pg"
[[ ${#as_pg[@]} -gt 0 ]] && chown postgres "$tmp" "$tmp/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/pg" -U megaserve --auth=trust -E UTF8 >"$tmp/initdb.log" 2>&1 ||
  { cat "$tmp/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w \
  -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
  { cat "$tmp/pg.log" >&2; exit 1; }
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U megaserve megaserve_test

export TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export TEST_POSTGRES_URL="postgresql://megaserve@127.0.0.1:$pg_port/megaserve_test"
echo "test: redis on $TEST_REDIS_URL, postgresql on $TEST_POSTGRES_URL"

ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
