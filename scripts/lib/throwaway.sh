# Throwaway servers on loopback for tests and benchmarks; source this file, don't run it.
#   free_port                      prints a free TCP port on 127.0.0.1
#   pg_start DIR DB [SETTING...]   initdb + start PostgreSQL in DIR/pg (each SETTING is passed as
#                                  -c SETTING), create DB; sets pg_url, pg_port
#   pg_stop DIR                    stops it (immediately: its data is thrown away)
# PostgreSQL refuses to run as root, so as root its files and processes belong to `postgres`.

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

_as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  local dir=$1 db=$2
  shift 2
  local bin
  bin=$(_pg_bin)
  [[ -n $bin ]] || { echo "missing PostgreSQL server binaries: run scripts/setup.sh" >&2; return 1; }
  local opts="-k $dir -c listen_addresses=127.0.0.1"
  for setting in "$@"; do opts+=" -c $setting"; done
  pg_port=$(free_port)
  mkdir -p "$dir/pg"
  [[ $(id -u) -eq 0 ]] && chown postgres "$dir" "$dir/pg"
  _as_pg "$bin/initdb" -D "$dir/pg" -U megaserve --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  _as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -o "-p $pg_port $opts" start >/dev/null ||
    { cat "$dir/pg.log" >&2; return 1; }
  "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U megaserve "$db"
  pg_url="postgresql://megaserve@127.0.0.1:$pg_port/$db"
}

pg_stop() {
  [[ -d $1/pg ]] && _as_pg "$(_pg_bin)/pg_ctl" -D "$1/pg" -m immediate -w stop >/dev/null 2>&1
  return 0
}
