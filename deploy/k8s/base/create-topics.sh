#!/usr/bin/env bash
# Creates eventpipe's Kafka topics with Kafka's own kafka-topics tool, idempotently (--if-not-exists).
#
# Every eventpipe stage also creates missing topics at start (eventpipe.kafka.ensure_topics), but with
# replication factor 1. Run this first on a multi-broker cluster so the topics get a real replication
# factor; the stages then find them and leave them alone. The list must match
# eventpipe.kafka.topic_specs() (tests/test_unit_deploy.py checks it).
#
# Used by the `topics` service of docker-compose.yml and the migrate Job of deploy/k8s (apache/kafka
# image). Settings, from the environment:
#   EVENTPIPE_KAFKA_BOOTSTRAP  bootstrap servers                      (default kafka:9092)
#   EVENTPIPE_TOPIC_PREFIX     topic prefix                           (default eventpipe_)
#   EVENTPIPE_PARTITIONS       partitions of the partitioned topics   (default 4)
#   TOPIC_REPLICATION_FACTOR   replication factor                     (default 1)
#   TOPIC_MIN_INSYNC_REPLICAS  min.insync.replicas (acks=all waits for this many replicas; default 1)
#   KAFKA_TOPICS               the kafka-topics command               (default /opt/kafka/bin/kafka-topics.sh)
set -euo pipefail

bootstrap="${EVENTPIPE_KAFKA_BOOTSTRAP:-kafka:9092}"
prefix="${EVENTPIPE_TOPIC_PREFIX:-eventpipe_}"
partitions="${EVENTPIPE_PARTITIONS:-4}"
rf="${TOPIC_REPLICATION_FACTOR:-1}"
min_isr="${TOPIC_MIN_INSYNC_REPLICAS:-1}"
read -r -a kafka_topics <<< "${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"

create() {  # create NAME PARTITIONS [--config K=V ...]
  local name="$prefix$1" count="$2"
  shift 2
  "${kafka_topics[@]}" --bootstrap-server "$bootstrap" --create --if-not-exists --topic "$name" \
    --partitions "$count" --replication-factor "$rf" --config "min.insync.replicas=$min_isr" "$@"
  echo "topic $name: $count partitions, replication factor $rf"
}

# Partitioned topics (keyed: one distinct id's events stay in order on one partition; identity_inbox and
# events_historical must have the partition count of events_raw).
create events_raw "$partitions"
create events_historical "$partitions"
create identity_inbox "$partitions"
create clickhouse_events "$partitions"
create clickhouse_person "$partitions"
create clickhouse_person_distinct_id "$partitions"
create clickhouse_person_distinct_id_overrides "$partitions"
create clickhouse_groups "$partitions"
create clickhouse_ingestion_warnings "$partitions"
create events_dlq "$partitions"
# The team registry: one partition (a total order) and compacted (latest record per api key).
create teams 1 --config cleanup.policy=compact
