#!/usr/bin/env bash
# A two-node ClickHouse cluster (Debian's clickhouse-server ×2 + the ZooKeeper of zookeeper.sh) for
# testing cluster mode (EVENTPIPE_CLICKHOUSE_CLUSTER=eventpipe): one shard, two replicas, each node with
# its own config, ports and data under .local/clickhouse-cluster/node1|node2. The single-node server
# of clickhouse.sh (ports 19000/18123), the system service and /etc are left alone.
#   clickhouse-cluster.sh start|stop|status
source "$(dirname "$0")/lib.sh"

DIR="$LOCAL/clickhouse-cluster"
CLUSTER=eventpipe
ZK_PORT="${EVENTPIPE_LOCAL_ZOOKEEPER_PORT:-12181}"
# node N: native, http and interserver (replication) ports.
TCP_PORTS=("${EVENTPIPE_LOCAL_CLUSTER_NODE1_PORT:-19100}" "${EVENTPIPE_LOCAL_CLUSTER_NODE2_PORT:-19200}")
HTTP_PORTS=("${EVENTPIPE_LOCAL_CLUSTER_NODE1_HTTP_PORT:-18223}" "${EVENTPIPE_LOCAL_CLUSTER_NODE2_HTTP_PORT:-18323}")
INTERSERVER_PORTS=("${EVENTPIPE_LOCAL_CLUSTER_NODE1_INTERSERVER_PORT:-19109}" "${EVENTPIPE_LOCAL_CLUSTER_NODE2_INTERSERVER_PORT:-19209}")

install() {
  command -v clickhouse-server >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "clickhouse-server is missing; install it with: sudo apt-get install clickhouse-server"
  log "installing Debian's clickhouse-server package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq clickhouse-server >/dev/null || die "apt-get install clickhouse-server failed"
}

node_dir() { echo "$DIR/node$1"; }
pidfile() { echo "$(node_dir "$1")/clickhouse.pid"; }
logfile() { echo "$(node_dir "$1")/logs/server.log"; }

configure() {  # configure N (1-based)
  local n=$1 i=$(( $1 - 1 )) d
  d=$(node_dir "$n")
  mkdir -p "$d/data" "$d/tmp" "$d/logs" "$d/user_files" "$d/format_schemas"
  cat > "$d/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>information</level><log>$(logfile "$n")</log><errorlog>$d/logs/error.log</errorlog><size>100M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>${TCP_PORTS[$i]}</tcp_port>
  <http_port>${HTTP_PORTS[$i]}</http_port>
  <interserver_http_port>${INTERSERVER_PORTS[$i]}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>$d/data/</path>
  <tmp_path>$d/tmp/</tmp_path>
  <user_files_path>$d/user_files/</user_files_path>
  <format_schema_path>$d/format_schemas/</format_schema_path>
  <users_config>$d/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <zookeeper>
    <node index="1"><host>127.0.0.1</host><port>$ZK_PORT</port></node>
    <session_timeout_ms>10000</session_timeout_ms>
  </zookeeper>
  <macros><shard>01</shard><replica>node$n</replica></macros>
  <remote_servers>
    <$CLUSTER>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>${TCP_PORTS[0]}</port></replica>
        <replica><host>127.0.0.1</host><port>${TCP_PORTS[1]}</port></replica>
      </shard>
    </$CLUSTER>
  </remote_servers>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
XML
  write_users_xml "$d/users.xml" 2000000000
}

# Ready: both ports answer and the node holds a ZooKeeper session (ON CLUSTER DDL and replication need it).
ready() {  # ready N
  local i=$(( $1 - 1 ))
  port_open 127.0.0.1 "${TCP_PORTS[$i]}" || return 1
  [ "$(curl -s --max-time 2 "http://127.0.0.1:${HTTP_PORTS[$i]}/" \
    --data-binary "SELECT count() > 0 FROM system.zookeeper WHERE path = '/'" 2>/dev/null)" = 1 ]
}

ready_or_dead() {  # ready_or_dead N
  local d
  d=$(node_dir "$1")
  pid_alive "$(pidfile "$1")" || { tail -n 30 "$d/logs/error.log" "$d/logs/stdout.log" >&2 2>/dev/null || true;
    die "ClickHouse node$1 exited during start; see $d/logs/error.log"; }
  ready "$1"
}

launch() {  # launch N: start the node's server in the background unless it runs already
  local n=$1 i=$(( $1 - 1 )) d
  d=$(node_dir "$n")
  if pid_alive "$(pidfile "$n")"; then log "node$n already running (pid $(cat "$(pidfile "$n")")) on 127.0.0.1:${TCP_PORTS[$i]}"; return 0; fi
  for port in "${TCP_PORTS[$i]}" "${HTTP_PORTS[$i]}" "${INTERSERVER_PORTS[$i]}"; do
    if port_open 127.0.0.1 "$port"; then die "port $port of node$n is taken; set EVENTPIPE_LOCAL_CLUSTER_NODE${n}_*PORT"; fi
  done
  configure "$n"
  log "starting ClickHouse node$n on 127.0.0.1:${TCP_PORTS[$i]} (native) / ${HTTP_PORTS[$i]} (http) (log: $(logfile "$n"))"
  nohup clickhouse-server --config-file="$d/config.xml" >"$d/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$n")"
}

start() {
  install
  # The replicas coordinate through ZooKeeper: start it first (a no-op when it runs already).
  bash "$ROOT/deploy/local/zookeeper.sh" start
  launch 1
  launch 2
  local n
  for n in 1 2; do
    wait_until "${EVENTPIPE_LOCAL_START_TIMEOUT:-60}" "$(logfile "$n")" "ClickHouse node$n" ready_or_dead "$n"
  done
  log "ClickHouse cluster '$CLUSTER' ready: node1 127.0.0.1:${TCP_PORTS[0]}, node2 127.0.0.1:${TCP_PORTS[1]}"
}

stop() {
  stop_pid "$(pidfile 1)" "ClickHouse node1"
  stop_pid "$(pidfile 2)" "ClickHouse node2"
}

status() {
  local n rc=0
  for n in 1 2; do
    if pid_alive "$(pidfile "$n")" && ready "$n"; then
      echo "clickhouse-cluster node$n: running on 127.0.0.1:${TCP_PORTS[$(( n - 1 ))]}"
    else
      echo "clickhouse-cluster node$n: stopped"; rc=1
    fi
  done
  return "$rc"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
