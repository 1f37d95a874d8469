#!/usr/bin/env bash
# Local Apache Kafka (KRaft, combined broker+controller nodes) for development and tests.
# Jars come from Maven Central through deploy/local/pom.xml; everything lives under .local/kafka.
#   kafka.sh start|stop|status|fetch|bootstrap|kill NODE
#
# EVENTPIPE_LOCAL_KAFKA_BROKERS=N (default 1) runs N nodes, node.id 1..N, all of them voters of the
# controller quorum. Node i listens for clients on EVENTPIPE_LOCAL_KAFKA_PORT+i-1 and for the quorum on
# EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT+i-1 (default: 19093 for one node, PORT+100 for several, so the
# two ranges never overlap). One node keeps today's layout ($DIR/data, $DIR/kafka.pid, $DIR/logs);
# several get $DIR/node<i>/{data,logs,kafka.pid,server.properties} and share $DIR/libs. With N >= 3
# topics default to replication factor 3 and min.insync.replicas 2 (internal topics too).
#   start       starts the nodes that are not running (so it restarts a killed one), waits for all
#   stop        stops every node (all at once: the last voters must not wait for a lost quorum)
#   kill NODE   SIGKILLs node NODE (fault tests); `start` brings it back with its data
#   bootstrap   prints the client bootstrap string, e.g. 127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094
# EVENTPIPE_LOCAL_KAFKA_DIR moves Kafka's directory away from $EVENTPIPE_LOCAL_DIR/kafka.
source "$(dirname "$0")/lib.sh"

DIR="${EVENTPIPE_LOCAL_KAFKA_DIR:-$LOCAL/kafka}"
BROKERS="${EVENTPIPE_LOCAL_KAFKA_BROKERS:-1}"
PORT="${EVENTPIPE_LOCAL_KAFKA_PORT:-19092}"
case "$BROKERS" in ''|*[!0-9]*|0) die "EVENTPIPE_LOCAL_KAFKA_BROKERS must be a positive integer, got '$BROKERS'" ;; esac
if [ "$BROKERS" -eq 1 ]; then
  CONTROLLER_PORT="${EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT:-19093}"
else
  CONTROLLER_PORT="${EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT:-$((PORT + 100))}"
  if [ "$CONTROLLER_PORT" -lt $((PORT + BROKERS)) ] && [ $((CONTROLLER_PORT + BROKERS)) -gt "$PORT" ]; then
    die "controller ports $CONTROLLER_PORT.. overlap broker ports $PORT..$((PORT + BROKERS - 1)); set EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT"
  fi
fi
# Replication of the cluster's defaults and internal topics: min(3, N) copies, 2 of them in sync when 3.
RF=$(( BROKERS < 3 ? BROKERS : 3 ))
MIN_ISR=$(( RF >= 3 ? 2 : 1 ))
POM="$ROOT/deploy/local/pom.xml"

# Per-node paths and ports (node 1 of a single-node install is exactly the old layout).
node_dir() { if [ "$BROKERS" -eq 1 ]; then echo "$DIR"; else echo "$DIR/node$1"; fi; }
node_port() { echo $((PORT + $1 - 1)); }
node_controller_port() { echo $((CONTROLLER_PORT + $1 - 1)); }
pidfile() { echo "$(node_dir "$1")/kafka.pid"; }
logfile() { echo "$(node_dir "$1")/logs/server.log"; }
nodes() { seq 1 "$BROKERS"; }

bootstrap() {
  local i out=""
  for i in $(nodes); do out="$out${out:+,}127.0.0.1:$(node_port "$i")"; done
  echo "$out"
}

voters() {
  local i out=""
  for i in $(nodes); do out="$out${out:+,}$i@127.0.0.1:$(node_controller_port "$i")"; done
  echo "$out"
}

fetch() {
  # Re-fetch only when the pom changed, so `make test` stays fast on a warm machine.
  local stamp="$DIR/libs/.pom.sha"
  if [ -f "$stamp" ] && [ "$(sha256sum "$POM" | cut -d' ' -f1)" = "$(cat "$stamp")" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn (Apache Maven) is required to fetch Kafka from Maven Central"
  command -v java >/dev/null || die "java 17+ is required to run Kafka"
  log "fetching Kafka jars from Maven Central into $DIR/libs"
  rm -rf "$DIR/libs"; mkdir -p "$DIR/libs"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$DIR/libs" >&2 \
    || die "maven could not fetch Kafka (see output above)"
  sha256sum "$POM" | cut -d' ' -f1 > "$stamp"
}

configure() {  # configure NODE
  local id=$1 dir port cport logfile
  dir=$(node_dir "$id"); port=$(node_port "$id"); cport=$(node_controller_port "$id"); logfile=$(logfile "$id")
  mkdir -p "$dir/data" "$dir/logs"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=$RF
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$RF
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$RF
share.coordinator.state.topic.min.isr=$MIN_ISR
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  if [ "$BROKERS" -gt 1 ]; then
    cat >> "$dir/server.properties" <<PROPS
default.replication.factor=$RF
min.insync.replicas=$MIN_ISR
PROPS
  fi
  cat > "$dir/log4j2.properties" <<PROPS
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $logfile
appender.file.filePattern = $logfile.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
}

ready() {  # ready NODE
  port_open 127.0.0.1 "$(node_port "$1")" && grep -q "Kafka Server started" "$(logfile "$1")" 2>/dev/null
}

cluster_id() {
  # One id for every node of the cluster; kept so that a node whose data was wiped joins the same one.
  local cp="$DIR/libs/*" file="$DIR/cluster.id" i
  if [ "$BROKERS" -gt 1 ] && [ -s "$file" ]; then cat "$file"; return 0; fi
  if [ "$BROKERS" -gt 1 ]; then  # data of an earlier run without the file: reuse its id
    for i in $(nodes); do
      if [ -f "$(node_dir "$i")/data/meta.properties" ]; then
        sed -n 's/^cluster.id=//p' "$(node_dir "$i")/data/meta.properties" | tee "$file"; return 0
      fi
    done
  fi
  java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 | { if [ "$BROKERS" -gt 1 ]; then tee "$file"; else cat; fi; }
}

launch() {  # launch NODE: format (first start only) and start one node in the background
  local id=$1 dir cp="$DIR/libs/*" id_
  dir=$(node_dir "$id")
  configure "$id"
  if [ ! -f "$dir/data/meta.properties" ]; then
    id_=$(cluster_id)
    java -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
      -t "$id_" -c "$dir/server.properties" >"$dir/logs/format.log" 2>&1 \
      || die "kafka storage format failed; see $dir/logs/format.log"
  fi
  : > "$(logfile "$id")"
  log "starting Kafka node $id on 127.0.0.1:$(node_port "$id") (log: $(logfile "$id"))"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$id")"
}

start() {
  local i started=()
  for i in $(nodes); do
    if pid_alive "$(pidfile "$i")"; then continue; fi
    if port_open 127.0.0.1 "$(node_port "$i")"; then
      die "port $(node_port "$i") (node $i) is taken by another process; set EVENTPIPE_LOCAL_KAFKA_PORT"
    fi
    if port_open 127.0.0.1 "$(node_controller_port "$i")"; then
      die "controller port $(node_controller_port "$i") (node $i) is taken; set EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT"
    fi
    started+=("$i")
  done
  if [ "${#started[@]}" -eq 0 ]; then
    if [ "$BROKERS" -eq 1 ]; then
      log "already running (pid $(cat "$(pidfile 1)")) on 127.0.0.1:$PORT"
    else
      log "already running: $BROKERS nodes on $(bootstrap)"
    fi
    bootstrap
    return 0
  fi
  fetch
  # Nodes are launched together: a KRaft node only becomes ready once a quorum of voters is up.
  for i in "${started[@]}"; do launch "$i"; done
  for i in "${started[@]}"; do
    wait_until "${EVENTPIPE_LOCAL_START_TIMEOUT:-90}" "$(logfile "$i")" "Kafka node $i" ready_or_dead "$i"
  done
  if [ "$BROKERS" -eq 1 ]; then log "Kafka ready on 127.0.0.1:$PORT"; else log "Kafka ready: $BROKERS nodes (started ${started[*]})"; fi
  bootstrap
}

ready_or_dead() {  # ready_or_dead NODE
  local dir
  dir=$(node_dir "$1")
  if ! pid_alive "$(pidfile "$1")"; then
    tail -n 30 "$dir/logs/stdout.log" "$(logfile "$1")" >&2 2>/dev/null || true
    die "Kafka node $1 exited during start; see $(logfile "$1") and $dir/logs/stdout.log"
  fi
  ready "$1"
}

stop() {
  if [ "$BROKERS" -eq 1 ]; then stop_pid "$(pidfile 1)" Kafka; return; fi
  local i
  for i in $(nodes); do stop_pid "$(pidfile "$i")" "Kafka node $i" & done
  wait
}

kill_node() {  # kill_node NODE: SIGKILL, no shutdown (a crash)
  local id=${1:-} pidfile
  case "$id" in ''|*[!0-9]*) die "usage: $0 kill NODE (1..$BROKERS)" ;; esac
  [ "$id" -ge 1 ] && [ "$id" -le "$BROKERS" ] || die "no node $id: EVENTPIPE_LOCAL_KAFKA_BROKERS=$BROKERS"
  pidfile=$(pidfile "$id")
  if ! pid_alive "$pidfile"; then log "node $id not running"; return 0; fi
  kill -9 "$(cat "$pidfile")"
  while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
  log "node $id (127.0.0.1:$(node_port "$id")) killed"
}

status() {
  if [ "$BROKERS" -eq 1 ]; then
    if pid_alive "$(pidfile 1)" && ready 1; then echo "kafka: running on 127.0.0.1:$PORT"; else echo "kafka: stopped"; exit 1; fi
    return
  fi
  local i up=0
  for i in $(nodes); do
    if pid_alive "$(pidfile "$i")" && ready "$i"; then
      echo "kafka node $i: running on 127.0.0.1:$(node_port "$i") (controller :$(node_controller_port "$i"))"
      up=$((up + 1))
    else
      echo "kafka node $i: stopped"
    fi
  done
  echo "kafka: $up/$BROKERS nodes running; bootstrap $(bootstrap)"
  [ "$up" -eq "$BROKERS" ]
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) fetch ;;
  bootstrap) bootstrap ;;
  kill) kill_node "${2:-}" ;;
  *) echo "usage: $0 start|stop|status|fetch|bootstrap|kill NODE" >&2; exit 2 ;;
esac
