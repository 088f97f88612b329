# Helpers shared by the benchmark scripts; source this file, don't run it.
#   median N...          the median of the numbers
#   ratio A B            A / B with two decimals
#   wrk_checked ARGS...  runs wrk ARGS and prints its report; when any answer was not 2xx, prints
#                        the report to stderr instead and returns 1, since the throughput of
#                        error answers is not comparable
#   wait_ready PID PORT LOG  waits until the megaserve of PID answers 200 on /readyz at
#                        127.0.0.1:PORT; if that process ends first, prints LOG and exits 1
#   scratch NAME         sets tmp to a new temporary folder named after NAME and pids to an empty
#                        list; on exit, kills every process in pids and removes tmp
#   forecast_fixture BINARY DIR  imports the 4h candles of $data into a job store in DIR with
#                        BINARY (printing the import's summary), and writes $tmp/uncached.toml (POST /v1/forecasts without the
#                        gateway's filters) and $tmp/post.lua (wrk posting one BTCUSDT 4h request)

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

wrk_checked() {
  local out
  out=$(wrk "$@") || return 1
  if grep -q 'Non-2xx' <<<"$out"; then
    echo "wrk $*: answers other than 2xx under load, so the throughput is not comparable:" >&2
    echo "$out" >&2
    return 1
  fi
  echo "$out"
}

scratch() {
  tmp=$(mktemp -d -t "megaserve-$1.XXXXXX")
  pids=()
  trap scratch_cleanup EXIT
}

scratch_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}

wait_ready() {
  until curl -sf -o /dev/null "http://127.0.0.1:$2/readyz"; do
    kill -0 "$1" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.002
  done
}

forecast_fixture() {
  "$1" data import "$data" --symbol BTCUSDT --interval 4h --data-dir "$2"
  cat > "$tmp/uncached.toml" <<'CONF'
[[routes]]
pattern = "/v1/forecasts"
filters = []
CONF
  cat > "$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"symbol":"BTCUSDT","interval":"4h","horizon":6}'
wrk.headers["Content-Type"] = "application/json"
LUA
}
