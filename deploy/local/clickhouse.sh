#!/usr/bin/env bash
# A ClickHouse server (Debian's clickhouse-server package) with the project's own config, ports and
# data directory under .local/clickhouse; the system service and /etc are left alone.
#   clickhouse.sh start|stop|status
source "$(dirname "$0")/lib.sh"

DIR="$LOCAL/clickhouse"
TCP_PORT="${EVENTPIPE_LOCAL_CLICKHOUSE_PORT:-19000}"
HTTP_PORT="${EVENTPIPE_LOCAL_CLICKHOUSE_HTTP_PORT:-18123}"
PIDFILE="$DIR/clickhouse.pid"
LOGFILE="$DIR/logs/server.log"

install() {
  command -v clickhouse-server >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "clickhouse-server is missing; install it with: sudo apt-get install clickhouse-server"
  log "installing Debian's clickhouse-server package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq clickhouse-server >/dev/null || die "apt-get install clickhouse-server failed"
}

configure() {
  mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/logs" "$DIR/user_files" "$DIR/format_schemas"
  cat > "$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><log>$LOGFILE</log><errorlog>$DIR/logs/error.log</errorlog><size>100M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$TCP_PORT</tcp_port>
  <http_port>$HTTP_PORT</http_port>
  <path>$DIR/data/</path>
  <tmp_path>$DIR/tmp/</tmp_path>
  <user_files_path>$DIR/user_files/</user_files_path>
  <format_schema_path>$DIR/format_schemas/</format_schema_path>
  <users_config>$DIR/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
  write_users_xml "$DIR/users.xml" 4000000000
}

ready() { port_open 127.0.0.1 "$TCP_PORT" && port_open 127.0.0.1 "$HTTP_PORT"; }

ready_or_dead() {
  pid_alive "$PIDFILE" || { tail -n 30 "$DIR/logs/error.log" "$DIR/logs/stdout.log" >&2 2>/dev/null || true;
    die "ClickHouse exited during start; see $DIR/logs/error.log"; }
  ready
}

start() {
  if pid_alive "$PIDFILE"; then log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$TCP_PORT"; return 0; fi
  if port_open 127.0.0.1 "$TCP_PORT"; then die "port $TCP_PORT is taken; set EVENTPIPE_LOCAL_CLICKHOUSE_PORT"; fi
  install
  configure
  log "starting ClickHouse server on 127.0.0.1:$TCP_PORT (native) / $HTTP_PORT (http) (log: $LOGFILE)"
  nohup clickhouse-server --config-file="$DIR/config.xml" >"$DIR/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_until "${EVENTPIPE_LOCAL_START_TIMEOUT:-60}" "$LOGFILE" "ClickHouse" ready_or_dead
  log "ClickHouse ready on 127.0.0.1:$TCP_PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid "$PIDFILE" ClickHouse ;;
  status) if pid_alive "$PIDFILE" && ready; then echo "clickhouse: running on 127.0.0.1:$TCP_PORT"; else echo "clickhouse: stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
