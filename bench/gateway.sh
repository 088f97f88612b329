#!/usr/bin/env bash
# The gateway's policies at speed, against nginx, all in one run on one machine:
#   plain     megaserve serve, GET /v1/status with no filters on the route
#   auth+L1   the same route behind auth (a real API key), a GCRA rate limit and the response
#             cache: every request is an authenticated, rate-limited L1 hit
#   L2        as auth+L1, with the in-memory tier off (cache.memory_bytes = 0): every request is
#             a Redis hit
#   static    nginx serving the auth+L1 body as a static file
#   proxy     megaserve gateway proxying to a keep-alive upstream (an nginx static server)
#   nginx-px  nginx proxy_pass (upstream keepalive) to the same upstream
# wrk -t1 -cCONNECTIONS alternates between them ROUNDS times. Each ratio is taken per round from
# two runs made back to back (the machine's speed drifts between rounds), and the median of the
# rounds' ratios is printed with the acceptance target.
#   bench/gateway.sh [BINARY]      (default build/release/megaserve)
# Environment: ROUNDS (7), DURATION (3s), CONNECTIONS (64).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/release/megaserve}
rounds=${ROUNDS:-7}
duration=${DURATION:-3s}
conns=${CONNECTIONS:-64}
for tool in wrk nginx curl redis-server; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "missing $bin: run make" >&2; exit 1; }

tmp=$(mktemp -d -t megaserve-gw-bench.XXXXXX)
rport=
chmod 755 "$tmp"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -f $tmp/redis.pid ]]; then
    redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$tmp/redis.pid")" 2>/dev/null
  fi
  for _ in $(seq 50); do rm -rf "$tmp" 2>/dev/null && break; sleep 0.1; done
}
trap cleanup EXIT
source scripts/lib/throwaway.sh
source bench/lib.sh

# --- Redis --------------------------------------------------------------------------------------
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
  --daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log"
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

# --- megaserve instances --------------------------------------------------------------------------
start() {  # name port config-file subcommand
  local name=$1 port=$2 conf=$3 cmd=${4:-serve}
  MEGASERVE_LOG_ACCESS=false "$bin" "$cmd" --config "$conf" --listen "127.0.0.1:$port" \
    --data-dir "$tmp/$name" 2>"$tmp/$name.log" &
  pids+=("$!")
  wait_ready "$!" "$port" "$tmp/$name.log"
}

cat > "$tmp/plain.toml" <<CONF
[[routes]]
pattern = "/v1/status"
filters = []
CONF
cat > "$tmp/auth.toml" <<CONF
[gateway]
auth = "required"
[[routes]]
pattern = "/v1/status"
filters = ["auth", "rate_limit", "cache"]
cache_ttl = "1h"
rate_limit = "1000000000/s"
CONF
cat "$tmp/auth.toml" - > "$tmp/l2.toml" <<CONF
[cache]
memory_bytes = 0
[redis]
url = "redis://127.0.0.1:$rport/0"
CONF

mkdir -p "$tmp/auth" "$tmp/l2"
key=$("$bin" keys create --data-dir "$tmp/auth" --name bench --scopes jobs --quiet)
key2=$("$bin" keys create --data-dir "$tmp/l2" --name bench --scopes jobs --quiet)
pport=$(free_port); aport=$(free_port); lport=$(free_port)
start plain "$pport" "$tmp/plain.toml"
start auth "$aport" "$tmp/auth.toml"
start l2 "$lport" "$tmp/l2.toml"

# --- nginx: static file, upstream, proxy_pass ----------------------------------------------------
mkdir -p "$tmp/www/static"
curl -sf -H "Authorization: Bearer $key" "http://127.0.0.1:$aport/v1/status" > "$tmp/www/status.json"
cp "$tmp/www/status.json" "$tmp/www/static/status.json"
chmod -R a+rX "$tmp/www"
body_bytes=$(stat -c %s "$tmp/www/status.json")
sport=$(free_port); uport=$(free_port); xport=$(free_port)
cat > "$tmp/nginx.conf" <<CONF
worker_processes 2;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$uport; keepalive 64; }
  server { listen 127.0.0.1:$sport reuseport; root $tmp/www; }
  server { listen 127.0.0.1:$uport reuseport; root $tmp/www; }
  server {
    listen 127.0.0.1:$xport reuseport;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx_bin" -e "$tmp/nginx-error.log" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' &
pids+=("$!")
until curl -sf -o /dev/null "http://127.0.0.1:$xport/static/status.json"; do sleep 0.01; done

cat > "$tmp/gateway.toml" <<CONF
[[upstreams]]
name = "backend"
targets = ["http://127.0.0.1:$uport"]
health_path = "/status.json"
[[routes]]
pattern = "/static/{file}"
filters = ["proxy"]
upstream = "backend"
CONF
gport=$(free_port)
start gateway "$gport" "$tmp/gateway.toml" gateway

# --- runs ----------------------------------------------------------------------------------------
run_wrk() {  # url [header] -> requests/s; any non-2xx answer stops the script
  local url=$1 out; shift
  out=$(wrk_checked -t1 -c"$conns" -d"$duration" "$@" "$url") || exit 1
  awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}
check() {  # name url [header]: the body must be a 200 with the expected bytes
  local name=$1 url=$2; shift 2
  local code
  code=$(curl -s -o "$tmp/check.out" -w '%{http_code}' "$@" "$url")
  [[ $code == 200 ]] || { echo "$name: HTTP $code from $url: $(cat "$tmp/check.out")" >&2; exit 1; }
}

# In this order, each ratio's two targets run back to back in every round.
names=(plain auth+L1 static L2 nginx-px proxy)
urls=("http://127.0.0.1:$pport/v1/status" "http://127.0.0.1:$aport/v1/status"
      "http://127.0.0.1:$sport/status.json" "http://127.0.0.1:$lport/v1/status"
      "http://127.0.0.1:$xport/static/status.json" "http://127.0.0.1:$gport/static/status.json")
headers=("" "Authorization: Bearer $key" "" "Authorization: Bearer $key2" "" "")
# ratio name, numerator, denominator, target
pairs=("auth+L1 / plain|auth+L1|plain|0.90" "auth+L1 / static|auth+L1|static|1.00"
       "L2 / static|L2|static|0.50" "proxy / nginx-px|proxy|nginx-px|0.50")
declare -A results ratios
for i in "${!names[@]}"; do
  args=(); [[ -n ${headers[$i]} ]] && args=(-H "${headers[$i]}")
  check "${names[$i]}" "${urls[$i]}" "${args[@]}"
  wrk -t1 -c"$conns" -d1s "${args[@]}" "${urls[$i]}" >/dev/null   # warm-up
done
l2_hits_before=$(curl -s "http://127.0.0.1:$lport/metrics" | awk '/^megaserve_cache_requests_total\{.*result="l2_hit"/ {s += $2} END {print s + 0}')

echo "body: $body_bytes bytes; access logs off; wrk -t1 -c$conns -d$duration; $rounds rounds; $(nproc) cores"
printf '%-6s %-10s %12s\n' round target "requests/s"
for r in $(seq "$rounds"); do
  declare -A this=()
  for i in "${!names[@]}"; do
    args=(); [[ -n ${headers[$i]} ]] && args=(-H "${headers[$i]}")
    rps=$(run_wrk "${urls[$i]}" "${args[@]}")
    results[${names[$i]}]+="$rps "
    this[${names[$i]}]=$rps
    printf '%-6s %-10s %12s\n' "$r" "${names[$i]}" "$rps"
  done
  line="round $r ratios:"
  for pair in "${pairs[@]}"; do
    IFS='|' read -r label num den _ <<< "$pair"
    x=$(ratio "${this[$num]}" "${this[$den]}")
    ratios[$label]+="$x "
    line+="  $label $x"
  done
  echo "$line"
done
l2_hits_after=$(curl -s "http://127.0.0.1:$lport/metrics" | awk '/^megaserve_cache_requests_total\{.*result="l2_hit"/ {s += $2} END {print s + 0}')

echo
printf 'medians (requests/s):'
# shellcheck disable=SC2086
for n in "${names[@]}"; do printf ' %s %s ' "$n" "$(median ${results[$n]})"; done
echo
echo "ratios, median over the rounds (each round's ratio from back-to-back runs):"
for pair in "${pairs[@]}"; do
  IFS='|' read -r label _ _ target <<< "$pair"
  # shellcheck disable=SC2086
  printf '  %-17s %sx (target >= %sx; rounds: %s)\n' "$label:" "$(median ${ratios[$label]})" \
    "$target" "${ratios[$label]% }"
done
echo "L2 instance served $((l2_hits_after - l2_hits_before)) Redis hits during the runs"
