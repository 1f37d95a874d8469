"""The Faust application: two agents between the raw topic and the ClickHouse row topics.

``route`` (source: raw events, keyed ``token:distinct_id``) resolves the api key to a team and
re-keys the event by team onto ``events_by_team``. ``persons`` (source: ``events_by_team``) owns the
team's identity state in Faust tables — distinct ids, persons, groups — so every merge of a team is
decided by one agent instance, in one order, whatever partitions its ids came from (docs/identity.md).

Processing is at-least-once: Faust flushes the producer (changelog writes and emitted rows) before it
commits source offsets. The identity state is ONE table, so its changelog is one totally ordered
partition per team: after a SIGKILL the restored state is a prefix of the writes, and re-processing
the uncommitted events on top of it converges to the same mapping because every operation is
idempotent (see docs/identity.md). Re-emitted rows collapse in ClickHouse (ReplacingMergeTree).
"""

from __future__ import annotations

import logging
from typing import Any

import faust
import ujson

from eventpipe.config import Settings
from eventpipe.contract import RawEvent, dead_letter, now_ts
from eventpipe.kafka import RegistryReader, ensure_topics, topics_for
from eventpipe.supervisor import mark_ready
from processors.identity import State
from processors.transform import process_with_persons, unknown_team

log = logging.getLogger("eventpipe.processors")
# faust-streaming 0.15's exactly_once left transactions uncommitted against Kafka 4.1 in our tests.
PROCESSING_GUARANTEE = "at_least_once"


def _dumps(obj: object) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False).encode()


def build_app(settings: Settings) -> faust.App:
    topics = topics_for(settings)
    app = faust.App(
        topics.group("processors"),
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        processing_guarantee=PROCESSING_GUARANTEE,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        producer_linger_ms=5,
        broker_commit_every=10_000,
        broker_commit_interval=0.2,  # a transaction (and so the rows' visibility) every 200 ms
        stream_buffer_maxsize=8192,
        table_standby_replicas=0,
        web_enabled=False,
        datadir=str(settings.home / "faust"),
    )
    raw_topic = app.topic(topics.raw_events, key_type=bytes, value_type=bytes)
    by_team = app.topic(topics.events_by_team, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    outputs = {
        name: app.topic(name, key_type=bytes, value_type=bytes)
        for name in (
            topics.events,
            topics.persons,
            topics.person_distinct_ids,
            topics.groups,
            topics.ingestion_warnings,
            topics.dead_letters,
        )
    }

    schema = faust.Schema(key_serializer="json", value_serializer="json")
    identity = app.Table("identity", default=None, partitions=settings.partitions, schema=schema)
    state = State(distinct_ids=identity, persons=identity, groups=identity)
    registry = RegistryReader(settings)

    async def emit(topic: str, rows: list[dict[str, Any]], key: str | None = None) -> None:
        # send() only enqueues; the transaction commit waits for every ack before the offsets move.
        for row in rows:
            await outputs[topic].send(key=str(row[key]).encode() if key else None, value=_dumps(row))

    async def dead(reason: str, value: bytes, key: bytes | None) -> None:
        await outputs[topics.dead_letters].send(
            key=key, value=_dumps(dead_letter(reason, value, "processors", now_ts()))
        )

    @app.task
    async def start_registry() -> None:
        await ensure_topics(settings)
        await registry.start()

    @app.agent(raw_topic)
    async def route(stream: faust.StreamT) -> None:
        async for key, value in stream.items():
            try:
                raw = RawEvent.from_json(value)
            except (ValueError, TypeError) as exc:
                await dead(f"unparseable raw event: {exc}", value, key)
                continue
            team_id = await registry.resolve(raw.token)
            if team_id is None:
                await emit(topics.ingestion_warnings, unknown_team(raw).warnings)
                continue
            # Splice instead of re-encoding: {"team_id": N, "raw": <the raw event as received>}.
            await by_team.send(key=str(team_id).encode(), value=b'{"team_id":%d,"raw":%s}' % (team_id, value))

    @app.agent(by_team)
    async def persons(stream: faust.StreamT) -> None:
        async for key, value in stream.items():
            try:
                envelope = ujson.loads(value)
                raw = RawEvent(**envelope["raw"])
                rows, emitted = process_with_persons(raw, int(envelope["team_id"]), state)
            except Exception as exc:  # one poisonous event must not stall the team: dead-letter it
                log.exception("event could not be processed")
                await dead(f"processing failed: {exc!r}", value, key)
                continue
            await emit(topics.person_distinct_ids, emitted.distinct_ids, "distinct_id")
            await emit(topics.persons, emitted.persons, "id")
            await emit(topics.groups, emitted.groups, "group_key")
            await emit(topics.events, rows.events, "uuid")
            await emit(topics.ingestion_warnings, rows.warnings)

    @app.on_before_shutdown.connect
    async def stop_registry(_sender: object, **_kwargs: object) -> None:
        await registry.stop()

    @app.on_rebalance_complete.connect
    async def on_assigned(_sender: object, **_kwargs: object) -> None:
        mark_ready(settings, "processor")

    return app


def serve(settings: Settings) -> None:
    app = build_app(settings)
    worker = faust.Worker(app, loglevel="INFO")
    worker.execute_from_commandline()
