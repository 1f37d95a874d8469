"""The Faust application: one agent reads raw events, resolves the team, emits rows.

Delivery is at-least-once: Faust commits a source offset only after the producer flushed, so every
row an event produced is in Kafka before that event counts as processed (faust's consumer calls
``producer.flush()`` before each commit).
"""

from __future__ import annotations

import logging

import faust
import ujson

from eventpipe.config import Settings
from eventpipe.contract import RawEvent, dead_letter, now_ts
from eventpipe.kafka import RegistryReader, ensure_topics, topics_for
from eventpipe.supervisor import mark_ready
from processors.transform import Output, process_event, unknown_team

log = logging.getLogger("eventpipe.processors")


def _dumps(obj: object) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False).encode()


def build_app(settings: Settings) -> faust.App:
    topics = topics_for(settings)
    app = faust.App(
        topics.group("processors"),
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=5,
        broker_commit_every=10_000,
        broker_commit_interval=0.5,  # commits (and thus the flush that precedes them) twice a second
        stream_buffer_maxsize=8192,
        web_enabled=False,
        datadir=str(settings.home / "faust"),
    )
    raw_topic = app.topic(topics.raw_events, key_type=bytes, value_type=bytes, internal=False)
    events_topic = app.topic(topics.events, key_type=bytes, value_type=bytes)
    warnings_topic = app.topic(topics.ingestion_warnings, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(topics.dead_letters, key_type=bytes, value_type=bytes)
    registry = RegistryReader(settings)

    @app.task
    async def start_registry() -> None:
        await ensure_topics(settings)
        await registry.start()

    async def emit(out: Output) -> None:
        # send() only enqueues into the producer; the flush before each commit waits for the acks.
        for row in out.events:
            await events_topic.send(key=row["uuid"].encode(), value=_dumps(row))
        for warning in out.warnings:
            await warnings_topic.send(key=None, value=_dumps(warning))

    @app.agent(raw_topic)
    async def process(stream: faust.StreamT) -> None:
        async for key, value in stream.items():
            try:
                raw = RawEvent.from_json(value)
            except (ValueError, TypeError) as exc:
                dl = dead_letter(f"unparseable raw event: {exc}", value, "processors", now_ts())
                await dlq_topic.send(key=key, value=_dumps(dl))
                continue
            team_id = await registry.resolve(raw.token)
            await emit(unknown_team(raw) if team_id is None else process_event(raw, team_id))

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
