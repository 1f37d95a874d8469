#!/usr/bin/env bash
# The local ClickHouse 26 server: clickhouse-local from PyPI's chdb-core with its native and HTTP
# listeners on (clickhouse/local_server.py), data under .local/clickhouse, loopback only.
#   clickhouse.sh start|stop|status
source "$(dirname "$0")/lib.sh"

DIR="$LOCAL/clickhouse"
TCP_PORT="${EVENTPIPE_LOCAL_CLICKHOUSE_PORT:-19000}"
HTTP_PORT="${EVENTPIPE_LOCAL_CLICKHOUSE_HTTP_PORT:-18123}"
PY="${EVENTPIPE_PYTHON:-$ROOT/.venv/bin/python}"
PIDFILE="$DIR/server.pid"
LOGFILE="$DIR/server.log"

ready() { port_open 127.0.0.1 "$TCP_PORT" && port_open 127.0.0.1 "$HTTP_PORT"; }

ready_or_dead() {
  pid_alive "$PIDFILE" || { tail -n 30 "$LOGFILE" >&2 2>/dev/null || true;
    die "ClickHouse exited during start; see $LOGFILE"; }
  ready
}

start() {
  if pid_alive "$PIDFILE"; then log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$TCP_PORT"; return 0; fi
  for port in "$TCP_PORT" "$HTTP_PORT"; do
    if port_open 127.0.0.1 "$port"; then
      die "port $port is taken; set EVENTPIPE_LOCAL_CLICKHOUSE_PORT / EVENTPIPE_LOCAL_CLICKHOUSE_HTTP_PORT"
    fi
  done
  [ -x "$PY" ] || die "no Python at $PY (run make install, or set EVENTPIPE_PYTHON)"
  "$PY" -c 'import chdb' 2>/dev/null || die "chdb-core is missing: $PY -m pip install -e '$ROOT[local]'"
  mkdir -p "$DIR" && chmod 700 "$DIR"
  log "starting ClickHouse 26 on 127.0.0.1:$TCP_PORT (native) / $HTTP_PORT (http) (log: $LOGFILE)"
  (cd "$ROOT" && exec nohup "$PY" -m clickhouse.local_server --dir "$DIR" \
    --tcp-port "$TCP_PORT" --http-port "$HTTP_PORT" >"$LOGFILE" 2>&1 < /dev/null) &
  echo $! > "$PIDFILE"
  wait_until "${EVENTPIPE_LOCAL_START_TIMEOUT:-60}" "$LOGFILE" "ClickHouse" ready_or_dead
  log "ClickHouse ready on 127.0.0.1:$TCP_PORT (credentials: $DIR/server.json)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid "$PIDFILE" ClickHouse ;;
  status) if pid_alive "$PIDFILE" && ready; then echo "clickhouse: running on 127.0.0.1:$TCP_PORT"; else echo "clickhouse: stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
