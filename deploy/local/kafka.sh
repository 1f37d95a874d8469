#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for development and tests.
# Jars come from Maven Central through deploy/local/pom.xml; everything lives under .local/kafka.
#   kafka.sh start|stop|status|fetch
source "$(dirname "$0")/lib.sh"

DIR="$LOCAL/kafka"
PORT="${EVENTPIPE_LOCAL_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT:-19093}"
PIDFILE="$DIR/kafka.pid"
LOGFILE="$DIR/logs/server.log"
POM="$ROOT/deploy/local/pom.xml"

fetch() {
  # Re-fetch only when the pom changed, so `make test` stays fast on a warm machine.
  local stamp="$DIR/libs/.pom.sha"
  if [ -f "$stamp" ] && [ "$(sha256sum "$POM" | cut -d' ' -f1)" = "$(cat "$stamp")" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn (Apache Maven) is required to fetch Kafka from Maven Central"
  command -v java >/dev/null || die "java 17+ is required to run Kafka"
  log "fetching Kafka jars from Maven Central into $DIR/libs"
  rm -rf "$DIR/libs"; mkdir -p "$DIR/libs"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$DIR/libs" \
    || die "maven could not fetch Kafka (see output above)"
  sha256sum "$POM" | cut -d' ' -f1 > "$stamp"
}

configure() {
  mkdir -p "$DIR/data" "$DIR/logs"
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  cat > "$DIR/log4j2.properties" <<PROPS
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $LOGFILE
appender.file.filePattern = $LOGFILE.%i
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

ready() { port_open 127.0.0.1 "$PORT" && grep -q "Kafka Server started" "$LOGFILE" 2>/dev/null; }

start() {
  if pid_alive "$PIDFILE"; then log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; return 0; fi
  if port_open 127.0.0.1 "$PORT"; then die "port $PORT is taken by another process; set EVENTPIPE_LOCAL_KAFKA_PORT"; fi
  fetch
  configure
  local cp="$DIR/libs/*"
  if [ ! -f "$DIR/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    java -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$DIR/server.properties" >"$DIR/logs/format.log" 2>&1 \
      || die "kafka storage format failed; see $DIR/logs/format.log"
  fi
  : > "$LOGFILE"
  log "starting Kafka on 127.0.0.1:$PORT (log: $LOGFILE)"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$cp" kafka.Kafka "$DIR/server.properties" \
    >"$DIR/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_until "${EVENTPIPE_LOCAL_START_TIMEOUT:-90}" "$LOGFILE" "Kafka" ready_or_dead
  log "Kafka ready on 127.0.0.1:$PORT"
}

ready_or_dead() {
  if ! pid_alive "$PIDFILE"; then
    tail -n 30 "$DIR/logs/stdout.log" "$LOGFILE" >&2 2>/dev/null || true
    die "Kafka exited during start; see $LOGFILE and $DIR/logs/stdout.log"
  fi
  ready
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid "$PIDFILE" Kafka ;;
  status) if pid_alive "$PIDFILE" && ready; then echo "kafka: running on 127.0.0.1:$PORT"; else echo "kafka: stopped"; exit 1; fi ;;
  fetch) fetch ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
