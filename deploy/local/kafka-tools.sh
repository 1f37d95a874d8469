#!/usr/bin/env bash
# Apache Kafka's own command-line tools for the local broker, without a Kafka distribution: the jars
# come from Maven Central through deploy/local/kafka-tools-pom.xml into .local/kafka-tools/libs.
#   kafka-tools.sh topics ARGS...            = kafka-topics.sh ARGS...
#   kafka-tools.sh consumer-groups ARGS...   = kafka-consumer-groups.sh ARGS...
#   kafka-tools.sh producer ARGS...          = kafka-console-producer.sh ARGS... (records from stdin)
#   kafka-tools.sh fetch                     fetch the jars only
# --bootstrap-server defaults to the local broker (127.0.0.1:$EVENTPIPE_LOCAL_KAFKA_PORT) when not given.
source "$(dirname "$0")/lib.sh"

DIR="$LOCAL/kafka-tools"
POM="$ROOT/deploy/local/kafka-tools-pom.xml"
BOOTSTRAP="127.0.0.1:${EVENTPIPE_LOCAL_KAFKA_PORT:-19092}"

fetch() {
  local stamp="$DIR/libs/.pom.sha"
  if [ -f "$stamp" ] && [ "$(sha256sum "$POM" | cut -d' ' -f1)" = "$(cat "$stamp")" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn (Apache Maven) is required to fetch Kafka's tools from Maven Central"
  command -v java >/dev/null || die "java 17+ is required to run Kafka's tools"
  log "fetching Kafka's command-line tools from Maven Central into $DIR/libs"
  rm -rf "$DIR/libs"; mkdir -p "$DIR/libs"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$DIR/libs" \
    >&2 || die "maven could not fetch Kafka's tools (see output above)"
  # The explicit slf4j-api 2 must win over the 1.7 that kafka-tools brings along.
  rm -f "$DIR"/libs/slf4j-api-1.*.jar
  cat > "$DIR/log4j2.properties" <<PROPS
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %p %m (%c)%n
PROPS
  sha256sum "$POM" | cut -d' ' -f1 > "$stamp"
}

run_tool() {  # run_tool MAIN_CLASS ARGS...
  local main=$1; shift
  fetch
  local args=("$@")
  case " $* " in *" --bootstrap-server "*) ;; *) args=(--bootstrap-server "$BOOTSTRAP" "${args[@]}") ;; esac
  exec java -Xmx256m -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$DIR/libs/*" "$main" "${args[@]}"
}

case "${1:-}" in
  topics) shift; run_tool org.apache.kafka.tools.TopicCommand "$@" ;;
  consumer-groups) shift; run_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@" ;;
  producer) shift; run_tool org.apache.kafka.tools.ConsoleProducer "$@" ;;
  fetch) fetch ;;
  *) echo "usage: $0 topics|consumer-groups|producer ARGS... | fetch" >&2; exit 2 ;;
esac
