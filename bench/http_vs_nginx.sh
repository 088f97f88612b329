#!/usr/bin/env bash
# megaserve's GET /v1/status against nginx serving the same bytes as a static file, on loopback.
#
# Both get the machine's cores (megaserve: one I/O thread per core; nginx: 2 workers, access log
# off); megaserve runs with its access log off too. wrk (-t1 -c64 -d10s) alternates between them
# ROUNDS times; the script prints requests/s and p99 of every run, the medians and their ratios,
# megaserve's idle resident memory after start and its start-to-ready time.
#   bench/http_vs_nginx.sh [BINARY]      (default build/release/megaserve)
# Environment: ROUNDS (3), DURATION (10s), CONNECTIONS (64); ACCESS_LOG=on keeps megaserve's
# JSON access log on (written to a file) to measure its cost.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/release/megaserve}
rounds=${ROUNDS:-3}
duration=${DURATION:-10s}
conns=${CONNECTIONS:-64}
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "missing $tool: run scripts/setup.sh" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "missing $bin: run make" >&2; exit 1; }

source scripts/lib/throwaway.sh
source bench/lib.sh
scratch bench
chmod 755 "$tmp"

# --- megaserve: start-to-ready and idle memory -----------------------------------------------
mport=$(free_port)
t0=$(date +%s%N)
access_env=(MEGASERVE_LOG_ACCESS=false)
[[ ${ACCESS_LOG:-off} == on ]] && access_env=(MEGASERVE_LOG_ACCESS=true "MEGASERVE_LOG_ACCESS_FILE=$tmp/access.log")
env "${access_env[@]}" "$bin" serve --listen "127.0.0.1:$mport" --data-dir "$tmp/data" \
  2>"$tmp/megaserve.log" &
mpid=$!
pids+=("$mpid")
wait_ready "$mpid" "$mport" "$tmp/megaserve.log"
t1=$(date +%s%N)
ready_ms=$(( (t1 - t0) / 1000000 ))
internal_ms=$(grep -o 'ready in [0-9.]* ms' "$tmp/megaserve.log" | grep -o '[0-9.]*' || echo "?")
sleep 0.5
idle_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$mpid/status")

# --- nginx serving the same body -------------------------------------------------------------
nport=$(free_port)
mkdir -p "$tmp/www"
curl -sf "http://127.0.0.1:$mport/v1/status" > "$tmp/www/status.json"
body_bytes=$(stat -c %s "$tmp/www/status.json")
chmod -R a+rX "$tmp/www"
cat > "$tmp/nginx.conf" <<CONF
worker_processes 2;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nport reuseport;
    root $tmp/www;
  }
}
CONF
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx_bin" -e "$tmp/nginx-error.log" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' &
pids+=("$!")
until curl -sf -o /dev/null "http://127.0.0.1:$nport/status.json"; do sleep 0.01; done

# --- alternate wrk runs ----------------------------------------------------------------------
to_ms() {  # wrk latency "850.00us" / "1.20ms" / "1.01s" -> milliseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
                         else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
run_wrk() {  # url -> "rps p99_ms"; nothing (the caller's read then fails) on non-2xx answers
  local out
  out=$(wrk_checked -t1 -c"$conns" -d"$duration" --latency "$1") || exit 1
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p99")"
}

echo "body: $body_bytes bytes; megaserve access log ${ACCESS_LOG:-off}; wrk -t1 -c$conns -d$duration; $rounds rounds; $(nproc) cores"
printf '%-6s %-10s %12s %10s\n' round server "requests/s" "p99 ms"
ms_rps=(); ms_p99=(); ng_rps=(); ng_p99=()
curl -sf -o /dev/null "http://127.0.0.1:$mport/v1/status"
wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$mport/v1/status" >/dev/null   # warm-up
wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$nport/status.json" >/dev/null
for r in $(seq "$rounds"); do
  read -r rps p99 < <(run_wrk "http://127.0.0.1:$mport/v1/status")
  ms_rps+=("$rps"); ms_p99+=("$p99")
  printf '%-6s %-10s %12s %10s\n' "$r" megaserve "$rps" "$p99"
  read -r rps p99 < <(run_wrk "http://127.0.0.1:$nport/status.json")
  ng_rps+=("$rps"); ng_p99+=("$p99")
  printf '%-6s %-10s %12s %10s\n' "$r" nginx "$rps" "$p99"
done

m_rps=$(median "${ms_rps[@]}"); n_rps=$(median "${ng_rps[@]}")
m_p99=$(median "${ms_p99[@]}"); n_p99=$(median "${ng_p99[@]}")
rss_after_kib=$(awk '/VmRSS/ {print $2}' "/proc/$mpid/status")
echo
echo "median requests/s: megaserve $m_rps, nginx $n_rps, ratio $(awk -v a="$m_rps" -v b="$n_rps" 'BEGIN {printf "%.2f", a/b}')x (target >= 1.00x)"
echo "median p99 (ms):   megaserve $m_p99, nginx $n_p99, ratio $(awk -v a="$m_p99" -v b="$n_p99" 'BEGIN {printf "%.2f", a/b}')x (target <= 1.50x)"
echo "megaserve idle RSS after start: $(awk -v k="$idle_rss_kib" 'BEGIN {printf "%.1f", k/1024}') MiB (target <= 30); after load: $(awk -v k="$rss_after_kib" 'BEGIN {printf "%.1f", k/1024}') MiB"
echo "megaserve start to ready: ${ready_ms} ms from exec to first 200 on /readyz (in-process: ${internal_ms} ms; target <= 200)"
