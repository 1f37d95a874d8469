#!/usr/bin/env bash
# A standalone ZooKeeper (Debian's zookeeper package, run directly with java) for the local ClickHouse
# cluster of deploy/local/clickhouse-cluster.sh: own zoo.cfg, client port and data under .local/zookeeper;
# the system service and /etc/zookeeper are left alone.
#   zookeeper.sh start|stop|status
source "$(dirname "$0")/lib.sh"

DIR="$LOCAL/zookeeper"
PORT="${EVENTPIPE_LOCAL_ZOOKEEPER_PORT:-12181}"
PIDFILE="$DIR/zookeeper.pid"
LOGFILE="$DIR/logs/zookeeper.log"
# zookeeper.jar's manifest names its own dependencies; add an slf4j binding and log4j for the log file.
JAVA_CP="/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"

install() {
  [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "ZooKeeper is missing; install it with: sudo apt-get install zookeeper"
  log "installing Debian's zookeeper package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq zookeeper >/dev/null || die "apt-get install zookeeper failed"
}

configure() {
  mkdir -p "$DIR/data" "$DIR/logs"
  cat > "$DIR/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$DIR/data
clientPort=$PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CFG
  cat > "$DIR/log4j.properties" <<PROPS
log4j.rootLogger=INFO, FILE
log4j.appender.FILE=org.apache.log4j.RollingFileAppender
log4j.appender.FILE.File=$LOGFILE
log4j.appender.FILE.MaxFileSize=20MB
log4j.appender.FILE.MaxBackupIndex=2
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
PROPS
}

# ruok -> imok over the client port (the four-letter word whitelisted above).
ready() {
  local answer
  answer=$(exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$PORT" && printf 'ruok' >&3 && timeout 2 cat <&3) || return 1
  [ "$answer" = imok ]
}

ready_or_dead() {
  pid_alive "$PIDFILE" || { tail -n 30 "$DIR/logs/stdout.log" "$LOGFILE" >&2 2>/dev/null || true;
    die "ZooKeeper exited during start; see $LOGFILE and $DIR/logs/stdout.log"; }
  ready
}

start() {
  if pid_alive "$PIDFILE"; then log "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; return 0; fi
  if port_open 127.0.0.1 "$PORT"; then die "port $PORT is taken; set EVENTPIPE_LOCAL_ZOOKEEPER_PORT"; fi
  install
  configure
  log "starting ZooKeeper on 127.0.0.1:$PORT (log: $LOGFILE)"
  nohup java -Xms64m -Xmx256m -Djava.awt.headless=true -Dzookeeper.jmx.log4j.disable=true \
    -Dlog4j.configuration="file:$DIR/log4j.properties" -cp "$JAVA_CP" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$DIR/zoo.cfg" \
    >"$DIR/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_until "${EVENTPIPE_LOCAL_START_TIMEOUT:-30}" "$LOGFILE" "ZooKeeper" ready_or_dead
  log "ZooKeeper ready on 127.0.0.1:$PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid "$PIDFILE" ZooKeeper ;;
  status) if pid_alive "$PIDFILE" && ready; then echo "zookeeper: running on 127.0.0.1:$PORT"; else echo "zookeeper: stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
