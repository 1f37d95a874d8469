"""The Faust application: one agent over the raw events and the identity inbox, partitioned by distinct id.

Wiring, top to bottom (the logic is in processors/protocol.py, pure and tested without a broker):

    events_raw (key team:distinct_id) ─┐
                                        ├─▶ identity agent ─┬─▶ clickhouse_* rows, events_dlq
    identity_inbox (same partitions) ──┘                    ├─▶ identity_inbox (merges, forwards, re-pointings)
    events_historical (same partitions) ──▶ history agent ──┴─▶ table "identity" (changelog, one partition each)

All three topics have the same partition count, so Faust gives partition N of each to one worker, and
every state key is written by the partition that reads it. The history agent processes a slice of
historical events only while no live event waits (processors/priority.py); the two agents' batches run
one at a time, under one lock, through the same ``run_batch``. A batch of events (``take_events``) is
turned into steps against an overlay of the table; then, in this order:

1. every row and inbox message is sent and all acks awaited (no per-event round trip);
2. the steps' state writes go to the table, each in the context of its own event so its changelog
   partition (and a RocksDB store's partition) is that event's;
3. the body returns and ``take_events`` acks the batch; Faust flushes the changelog before it commits.

A crash between 1 and 2 leaves outputs without their state; the replay recomputes them, which the
protocol makes harmless (tests/test_unit_protocol.py simulates exactly this order). ``take_events`` acks in a
``finally``, so a batch whose outputs were not all acked is held (:func:`written_or_held`) and the worker
crashes; its offsets stay uncommitted and the events are read again after the restart.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import faust
import ujson
from aiohttp import web
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from faust.types import TP

from eventpipe.admin import serve_admin
from eventpipe.config import Settings
from eventpipe.contract import RawEvent, Topics, dead_letter, now_ts
from eventpipe.kafka import ensure_topics, producer, replication_configs, resolved_replication_factor, topics_for
from eventpipe.metrics import ProcessorMetrics
from eventpipe.supervisor import clear_ready, mark_ready, run_dir
from processors import priority, protocol
from processors.liveness import Liveness
from processors.ordering import Admit, InOrder, start_offsets

log = logging.getLogger("eventpipe.processors")

# faust-streaming 0.15's exactly_once left transactions uncommitted against Kafka 4.1 in our tests.
PROCESSING_GUARANTEE = "at_least_once"
BATCH = 1000
MAX_POLL_RECORDS = 500
BATCH_WINDOW_S = 0.02
LIST_OFFSETS_TIMEOUT_S = 2.0  # the watchdog's broker reads, for partitions that took nothing yet
RESUME_ATTEMPTS = 3
# Faust's default session timeout is 60 s: after a worker is SIGKILLed the group's rebalance waits that
# long for the dead member, and with eager rebalancing every partition of every worker stalls meanwhile
# (58 s measured in tests/test_it_identity.py's kill test). The heartbeat runs on the consumer's own
# thread, so a busy agent does not starve it.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 1.0
# The table's changelog is compacted (Faust), but Kafka only compacts closed segments, and a segment
# closes at 1 GB or after 7 days by default: until then a restart replays every write ever made, so its
# time grew with history. Rolling a segment every minute and cleaning at 10 % dirty keeps what a restart
# reads close to the live state (one record per id and person) plus a minute of writes.
TABLE = "identity"
CHANGELOG_CONFIG = {
    "segment.ms": str(60_000),
    "min.cleanable.dirty.ratio": "0.1",
    "min.compaction.lag.ms": "0",
}

def _dumps(obj: object) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False).encode()


def row_topics(topics: Topics) -> dict[str, tuple[str, str | None]]:
    """Row kind of a protocol step -> (topic, column whose value is the Kafka key)."""
    return {
        "events": (topics.events, "uuid"),
        "persons": (topics.persons, "id"),
        "distinct_ids": (topics.person_distinct_ids, "distinct_id"),
        "overrides": (topics.person_distinct_id_overrides, "distinct_id"),
        "groups": (topics.groups, "group_key"),
        "warnings": (topics.ingestion_warnings, None),
    }


def source_names(topics: Topics) -> dict[str, str]:
    """The agent's topics -> their metric label (the name without the prefix)."""
    return {
        topics.raw_events: "events_raw",
        topics.identity_inbox: "identity_inbox",
        topics.historical_events: "events_historical",
    }


def record_batch(
    metrics: ProcessorMetrics, names: Mapping[str, str], steps: Sequence[tuple[str, protocol.Step]], seconds: float
) -> None:
    """A written batch's figures: each message's topic and step, the batch's size and time."""
    for topic, step in steps:
        metrics.observe_step(names.get(topic, topic), step.rows, step.sends, step.outcome)
    metrics.observe_batch(len(steps), seconds)


def lag_labels(names: Mapping[str, str], lag: Mapping[Any, int]) -> dict[str, int]:
    """Lag per partition (Faust TPs, :meth:`Liveness.lag`) keyed by ``topic:partition`` labels."""
    return {f"{names.get(tp.topic, tp.topic)}:{tp.partition}": n for tp, n in lag.items()}


def history_buffer(partitions: int) -> int:
    """Size of the history agent's stream buffer: one that never fills.

    Faust stops fetching a partition once its stream buffer is 80 % full, but still delivers the records of
    the fetch it is iterating, and a later fetch may still hold another partition's records, one fetch of
    at most MAX_POLL_RECORDS per partition in the worst case. A buffer that fills blocks Faust's delivery
    to every agent: live events waited behind the waiting history agent (bench/history.py, before: live
    p50 5.6 s under a 60k-event backlog). The 20 % above Faust's threshold hold that sum with room to spare.
    """
    return max(8192, 8 * partitions * MAX_POLL_RECORDS)


def admin_file(settings: Settings) -> Path:
    """Where a worker without EVENTPIPE_ADMIN_SECRET writes its admin URL and secret (one per process)."""
    return run_dir(settings) / f"processor-admin-{os.getpid()}.json"


class Outbox:
    """Rows of one batch: sent without waiting, then all acks awaited at once (no per-event round trip)."""

    def __init__(self, prod: AIOKafkaProducer) -> None:
        self.prod = prod
        self.pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.pending.append(await self.prod.send(topic, value, key=key))

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        await asyncio.gather(*pending)


class TakenEvent(faust.Event):
    """A Faust event that knows whether an agent took it and the context it was taken in.

    faust-streaming's Stream skips a message that reaches it while a rebalance is under way (flow
    control suspended, or fetched under the previous generation) and acks it anyway, "otherwise the
    lag would increase": its offset became committable though no agent saw it. The agent marks each
    event it takes (:func:`taking`); the ack of an event never taken is ignored, so its offset stays
    uncommitted and the seek to committed offsets that ends every rebalance reads it again.

    ``context`` is the task context while the stream handed the event over, in which Faust's
    ``current_event()`` is this event: table reads and writes for the event run in it, so they go to
    the event's partition although ``take_events`` hands the agent a whole batch.
    """

    __slots__ = ("context", "taken")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken = False
        self.context: contextvars.Context | None = None

    def ack(self) -> bool:
        if not self.taken:
            return False
        return bool(super().ack())


def taking(stream: faust.StreamT) -> faust.StreamT:
    """Mark every event ``stream`` hands to the agent as taken, with its context (a processor runs
    before take_events' buffer sees the event; a message the stream skips never gets here)."""

    def mark(value: Any) -> Any:
        event = stream.current_event
        if isinstance(event, TakenEvent):
            event.taken = True
            event.context = contextvars.copy_context()
        return value

    stream.add_processor(mark)
    return stream


@asynccontextmanager
async def written_or_held(app: faust.App, events: Sequence[faust.EventT]) -> AsyncIterator[None]:
    """The body of one ``take_events`` batch: its offsets become committable only if it completes.

    ``take_events`` acks every event of the batch in a ``finally``, also when the body raised (e.g. the
    outbox flush failed) or was cancelled half-way (a shutdown), and Faust then commits offsets of rows
    that were never written. On any exception one more reference is taken on each message, so that
    ack is not the last one: the offsets stay uncommitted (a commit stops at the first one). Unless it
    is a cancellation (the worker is stopping anyway), the worker is crashed: it exits non-zero, the
    supervisor restarts it, and the held events are read again, not lost.
    """
    try:
        yield
    except BaseException as exc:
        for event in events:
            event.message.incref()
        if not isinstance(exc, asyncio.CancelledError):
            log.error("batch of %d events not written, their offsets stay uncommitted: %r", len(events), exc)
            await app.crash(exc)
        raise


class StateCache:
    """Table values this worker read or wrote, by (partition, key), kept across batches.

    Every key of a partition is written only by the worker that holds the partition, through
    :meth:`Overlay.apply`, which updates the cache too; so while the assignment stands the cache is the
    table, without the store's two lookups and a JSON decode per read (a quarter of a worker's CPU). It is
    dropped whenever partitions are revoked or assigned, when another worker's writes or a recovery may
    have changed them. Bounded: past ``limit`` entries the oldest tenth goes. Values are shared with the
    protocol, which never changes a value it read in place (it builds new records).
    """

    MISSING = object()

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self.values: dict[tuple[int, str], Any] = {}

    def get(self, partition: int, key: str) -> Any:
        return self.values.get((partition, key), self.MISSING)

    def put(self, partition: int, key: str, value: Any) -> None:
        if len(self.values) >= self.limit:
            for old in list(itertools.islice(self.values, self.limit // 10)):
                del self.values[old]
        self.values[(partition, key)] = value

    def clear(self) -> None:
        self.values.clear()


class Overlay:
    """The table as one batch sees it: the batch's own writes first, then the cache, then the table, read
    in the context of the event being processed. Writes are applied only by :meth:`apply`, after the
    outputs' acks."""

    def __init__(self, table: faust.Table, cache: StateCache | None = None) -> None:
        self.table = table
        self.cache = cache or StateCache(limit=0)
        self.writes: dict[str, Any] = {}
        self.pending: list[tuple[contextvars.Context, int, str, Any]] = []
        self.context = contextvars.copy_context()
        self.partition = -1

    def at(self, context: contextvars.Context | None, partition: int) -> None:
        """Reads and writes from now on are those of an event of ``partition`` taken in ``context``."""
        self.context = context or self.context
        self.partition = partition

    def get(self, key: str) -> Any:
        if key in self.writes:
            return self.writes[key]
        value = self.cache.get(self.partition, key)
        if value is StateCache.MISSING:
            value = self.context.run(self.table.get, key)
            if self.cache.limit:
                self.cache.put(self.partition, key, value)
        return value

    def stage(self, step: protocol.Step) -> None:
        items = [(step.wal, step.to_json())] if step.wal else []
        for key, value in [*items, *step.writes.items()]:
            self.writes[key] = value
            self.pending.append((self.context, self.partition, key, value))

    def apply(self) -> None:
        # In order, every write: a lane step's record, writes and counter must reach the changelog in the
        # order the protocol relies on (a prefix of them after a crash).
        for context, partition, key, value in self.pending:
            context.run(self.table.__setitem__, key, value)
            if self.cache.limit:
                self.cache.put(partition, key, value)
        self.pending = []


def step_for(overlay: Overlay, event: faust.EventT, topics: Topics, clock: int) -> protocol.Step:
    """The protocol step of one message (a dead letter for one that cannot be read)."""
    message = event.message
    try:
        if message.topic in (topics.raw_events, topics.historical_events):
            raw = RawEvent.from_json(event.value)
            if raw.team_id is None:
                return _dead("raw event without a team_id (written by a gateway older than this processor)")
            # The protocol compares an id's raw offsets (replays after a crash); a historical event's offset
            # is in another topic, so its order among the id's raw events counts as unknown.
            offset = message.offset if message.topic == topics.raw_events else None
            return protocol.on_raw(overlay, message.partition, raw, clock, offset)
        body = ujson.loads(event.value)
        if not isinstance(body, dict):
            return _dead("identity message is not a JSON object")
        return protocol.on_inbox(overlay, message.partition, body, clock)
    except (ValueError, TypeError, KeyError) as exc:
        log.exception("message could not be processed")
        return _dead(f"processing failed: {exc!r}")


def _dead(reason: str) -> protocol.Step:
    step = protocol.Step()
    step.row("dead", {"reason": reason})
    return step


async def broker_starts(admin: Any, consumer: Any, group: str, partitions: Iterable[TP]) -> dict[TP, int]:
    """Where each partition resumes after its assignment (processors/ordering.py, ``start_offsets``), read
    from the broker once: the group's committed offsets and the log starts. Not from Faust's record of
    committed offsets: it is empty until Faust seeks to them, and its fetcher delivers before that."""
    tps = list(partitions)
    found = await admin.list_consumer_group_offsets(
        group, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps]
    )
    committed = {}
    for tp in tps:
        meta = found.get(TopicPartition(tp.topic, tp.partition))
        committed[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
    return start_offsets(committed, await consumer.earliest_offsets(*tps))  # type: ignore[return-value]


async def resume_offsets(
    admin: Any, consumer: Any, group: str, partitions: Iterable[TP], backoff_s: float = 1.0
) -> dict[TP, int]:
    """:func:`broker_starts` for the first batch after an assignment: a round trip per assignment, not per
    message; retried a few times, then raised: the batch is held and the worker restarts (nothing taken,
    nothing committed)."""
    tps = list(partitions)
    for attempt in range(1, RESUME_ATTEMPTS + 1):
        try:
            return await broker_starts(admin, consumer, group, tps)
        except KafkaError as exc:
            if attempt == RESUME_ATTEMPTS:
                raise
            log.warning("where %d partitions resume is unknown (%r); asking again", len(tps), exc)
            await asyncio.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")


async def next_offsets(
    admin: Any, consumer: Any, group: str, in_order: InOrder, partitions: Iterable[TP]
) -> dict[TP, int | None]:
    """The next offset the agents take on each partition, for the watchdog: after the last one taken, or,
    before any, where it resumes (:func:`broker_starts`; None where the broker did not answer in time:
    the watchdog then counts it from its fetch position this time)."""
    nexts = {tp: in_order.resume_at(tp) for tp in partitions}
    unknown = [tp for tp, offset in nexts.items() if offset is None]
    if unknown:
        try:
            nexts.update(await asyncio.wait_for(broker_starts(admin, consumer, group, unknown), LIST_OFFSETS_TIMEOUT_S))
        except (TimeoutError, KafkaError) as exc:
            log.info("where %d partitions resume is unknown this time: %r", len(unknown), exc)
    return nexts


def datadir(settings: Settings) -> Path:
    """This worker's local state (RocksDB per partition), private to it: <home>/faust/<worker name>."""
    path = settings.home / "faust" / settings.worker_name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def build_app(settings: Settings) -> faust.App:
    topics = topics_for(settings)
    app = faust.App(
        topics.group("processors"),
        broker=f"eventpipe://{settings.kafka_bootstrap}",  # processors/transport.py
        # RocksDB (rocksdict) keeps each partition's state on disk with the changelog offset it reached:
        # a restarted worker reads only what was written since, not the whole changelog.
        store="rocksdb://",
        processing_guarantee=PROCESSING_GUARANTEE,
        topic_partitions=settings.partitions,
        topic_replication_factor=resolved_replication_factor(settings),
        key_serializer="raw",
        value_serializer="raw",
        producer_linger_ms=5,
        broker_commit_every=10_000,
        broker_commit_interval=0.2,
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
        stream_buffer_maxsize=8192,
        # Records per fetch handed to the agents' streams; with history_buffer() below, what keeps the
        # history agent's buffer from ever filling (processors/priority.py).
        broker_max_poll_records=MAX_POLL_RECORDS,
        table_standby_replicas=0,
        web_enabled=False,
        Event=TakenEvent,
        datadir=str(datadir(settings)),
    )
    live_topics = (topics.raw_events, topics.identity_inbox)
    sources = app.topic(*live_topics, key_type=bytes, value_type=bytes)
    # faust.Topic itself: app.topic() drops its maxsize argument (faust-streaming 0.15).
    history = faust.Topic(
        app,
        topics=[topics.historical_events],
        key_type=bytes,
        value_type=bytes,
        maxsize=history_buffer(settings.partitions),
    )
    schema = faust.Schema(key_serializer="json", value_serializer="json")
    identity = app.Table(
        TABLE, default=None, partitions=settings.partitions, schema=schema, extra_topic_configs=CHANGELOG_CONFIG
    )
    by_kind = row_topics(topics)
    edges: dict[str, AIOKafkaProducer] = {}
    kafka_admin: list[AIOKafkaAdminClient] = []  # where partitions resume (resume_offsets)
    admin: list[web.AppRunner] = []
    started = asyncio.Event()
    liveness = Liveness()
    in_order = InOrder()
    cache = StateCache()
    metrics, names = ProcessorMetrics(), source_names(topics)
    one_at_a_time = asyncio.Lock()  # a live batch and a historical slice never interleave

    @app.task
    async def start_edges() -> None:
        # aiokafka clients must be created inside the running loop, so not in build_app.
        edges["producer"] = producer(settings, linger_ms=5)
        await edges["producer"].start()
        kafka_admin.append(AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000))
        await kafka_admin[0].start()
        # Loopback /metrics behind the admin secret, like the sink's (eventpipe/admin.py).
        admin.append(await serve_admin(settings, metrics.render, settings.processor_admin_port, admin_file(settings)))
        started.set()

    @app.agent(sources)
    async def identity_agent(stream: faust.StreamT) -> None:
        async for events in taking(stream).take_events(BATCH, within=BATCH_WINDOW_S):
            async with written_or_held(app, events):
                async with one_at_a_time:
                    await run_batch(events)

    @app.agent(history)
    async def history_agent(stream: faust.StreamT) -> None:
        async for events in taking(stream).take_events(priority.SLICE, within=BATCH_WINDOW_S):
            async with written_or_held(app, events):
                await live_first()
                async with one_at_a_time:
                    await run_batch(events)

    async def live_first() -> None:
        """processors/priority.py: a slice of historical events waits while live events are waiting."""
        waited = 0.0
        while priority.defer(live_waiting(), app.rebalancing or not app.consumer.flow_active, waited):
            await asyncio.sleep(priority.POLL_S)
            waited += priority.POLL_S

    def live_waiting() -> bool:
        consumer = app.consumer
        live = [tp for tp in consumer.assignment() if tp.topic in live_topics]
        # A partition that never committed starts at offset 0 as far as a slice's wait goes: at worst a slice
        # waits MAX_WAIT_S for nothing, and this runs before every slice (no broker round trip here).
        return priority.live_behind(live, consumer.highwater, next_live)

    def next_live(tp: TP) -> int:
        taken = in_order.resume_at(tp)
        return taken if taken is not None else app.consumer.committed_offset(tp) or 0  # type: ignore[attr-defined]

    async def run_batch(batch: Sequence[faust.EventT]) -> None:
        if not started.is_set():
            await started.wait()
        events = await in_offset_order(batch)
        began = time.monotonic()
        out = Outbox(edges["producer"])
        overlay = Overlay(identity, cache)
        clock = time.time_ns() // 1000
        steps: list[tuple[str, protocol.Step]] = []
        for event in events:
            overlay.at(event.context, event.message.partition)  # type: ignore[attr-defined]
            step = step_for(overlay, event, topics, clock)
            steps.append((event.message.topic, step))
            for kind, rows in step.rows.items():
                if kind == "dead":
                    for row in rows:
                        letter = dead_letter(row["reason"], event.value, "processors", now_ts())
                        await out.send(topics.dead_letters, _dumps(letter), event.key)
                    continue
                topic, key_column = by_kind[kind]
                for row in rows:
                    await out.send(topic, _dumps(row), str(row[key_column]).encode() if key_column else None)
            for key, message in step.sends:
                await out.send(topics.identity_inbox, _dumps(message), key)
            overlay.stage(step)
        await out.flush()
        overlay.apply()
        record_batch(metrics, names, steps, time.monotonic() - began)

    @app.timer(5.0)
    async def watchdog() -> None:
        """processors/liveness.py: resume a stalled partition (and read again what it fetched and never
        handed over); restart the worker if that did not help."""
        if not started.is_set():  # its broker reads need start_edges' admin client
            return
        consumer = app.consumer
        assigned = {tp for tp in consumer.assignment() if tp.topic in names}
        positions = {tp: await consumer.position(tp) for tp in assigned}
        nexts = await next_offsets(kafka_admin[0], consumer, app.conf.id, in_order, assigned)
        verdict = liveness.check(
            time.monotonic(), assigned, consumer.highwater, positions.get, app.rebalancing, nexts.get
        )
        metrics.set_lag(lag_labels(names, liveness.lag(consumer.highwater, positions.get, nexts.get)))
        # Historical partitions are watched for their lag only: one of them can take nothing for long while
        # its messages wait behind the others' in the history agent's one buffer (its fetch paused by
        # Faust's flow control), or behind live traffic; restarting the worker then only starts over (a
        # 1M-event import crashed the worker after 86 s that way).
        verdict.resume = [tp for tp in verdict.resume if tp.topic in live_topics]
        verdict.give_up = [tp for tp in verdict.give_up if tp.topic in live_topics]
        if verdict.resume:
            metrics.watchdog.inc("resume", len(verdict.resume))
            log.warning("partitions %s have unread messages but took none for %.0f s: resuming them",
                        sorted(map(str, verdict.resume)), liveness.stall_after_s)
            consumer.resume_partitions(verdict.resume)
            consumer.resume_flow()
            for tp in verdict.resume:
                if tp in verdict.seek:
                    log.warning("%s: fetched up to offset %s but took nothing from %d on; reading again from %d",
                                tp, positions.get(tp), verdict.seek[tp], verdict.seek[tp])
                    await consumer.seek(tp, verdict.seek[tp])
        if verdict.give_up:
            metrics.watchdog.inc("restart")
            reason = f"partitions {sorted(map(str, verdict.give_up))} stayed stalled after a resume"
            log.error("%s: exiting so the supervisor restarts this worker (it reads from committed offsets)", reason)
            await app.crash(RuntimeError(reason))

    async def in_offset_order(batch: Sequence[faust.EventT]) -> list[faust.EventT]:
        """processors/ordering.py: the batch's messages that are their partition's next offset; the
        messages past a hole stay untaken (uncommitted) and :func:`seek_holes` reads the hole again."""
        unknown = in_order.unknown({event.message.tp for event in batch})
        if unknown:
            for tp, start in (await resume_offsets(kafka_admin[0], app.consumer, app.conf.id, unknown)).items():
                in_order.begin(tp, start)
        admitted = []
        now = time.monotonic()
        for event in batch:
            message = event.message
            verdict = in_order.admit(message.tp, message.offset, now)
            if verdict is Admit.TAKE:
                admitted.append(event)
                liveness.taken(message.tp, message.offset, now)
            elif verdict is Admit.GAP:
                event.taken = False  # type: ignore[attr-defined]
        return admitted

    @app.timer(0.5)
    async def seek_holes() -> None:
        for tp, offset in in_order.due_seeks(time.monotonic()):
            if tp in app.consumer.assignment():
                log.warning("%s: messages after offset %d arrived before it; reading again from %d", tp, offset, offset)
                await app.consumer.seek(tp, offset)

    @app.on_partitions_revoked.connect
    async def forget_positions(_sender: object, *_args: object, **_kwargs: object) -> None:
        in_order.reset()
        cache.clear()

    @app.on_partitions_assigned.connect
    async def forget_state(_sender: object, *_args: object, **_kwargs: object) -> None:
        cache.clear()  # a recovery (or another worker, before) may have changed what we held

    @app.on_before_shutdown.connect
    async def stop_edges(_sender: object, **_kwargs: object) -> None:
        clear_ready(settings, "processor")
        if "producer" in edges:
            await edges["producer"].stop()
        for client in kafka_admin:
            await client.close()
        for runner in admin:
            await runner.cleanup()
        admin_file(settings).unlink(missing_ok=True)

    @app.on_rebalance_complete.connect
    async def on_assigned(_sender: object, **_kwargs: object) -> None:
        mark_ready(settings, "processor")

    return app


def changelog_spec(settings: Settings) -> NewTopic:
    """The ``identity`` table's changelog as Faust declares it (``<app id>-<table>-changelog``, compacted,
    one partition per source partition)."""
    rf = resolved_replication_factor(settings)
    configs = {"cleanup.policy": "compact", **CHANGELOG_CONFIG, **replication_configs(rf)}
    return NewTopic(f"{topics_for(settings).group('processors')}-{TABLE}-changelog", settings.partitions, rf,
                    topic_configs=configs)


def serve(settings: Settings) -> None:
    # Topics must exist before the worker subscribes: Faust ignores a missing topic for good. The
    # changelog too: left to Faust, it is created moments before the group join, whose metadata can list
    # it without partitions, and the first table write then crashes the worker with PartitionsMismatch
    # ("... changelog has 0 partitions"; 2 of 20 test stacks on a loaded machine). ensure_topics waits
    # until every partition has a leader.
    asyncio.run(ensure_topics(settings))
    asyncio.run(ensure_topics(settings, [changelog_spec(settings)]))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust wants one
    app = build_app(settings)
    worker = faust.Worker(app, loglevel="INFO")
    worker.execute_from_commandline()
