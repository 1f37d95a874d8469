"""The Faust application: two agents between the raw topic and the ClickHouse row topics.

``route`` (source: raw events, keyed ``token:distinct_id``) resolves the api key to a team and
re-keys the event by team onto ``events_by_team``. ``persons`` (source: ``events_by_team``) owns the
team's identity state in one Faust table — distinct ids, persons, groups — so every merge of a team is
decided by one agent instance, in one order, whatever partitions its ids came from (docs/identity.md).

Both agents take events in small batches (``take_events``): the rows of a batch are sent with a plain
aiokafka producer and their acks awaited before the loop body returns, i.e. before Faust may ack and
commit the batch's offsets; Faust flushes its own producer (the table changelog) before each commit.
``take_events`` acks a batch in a ``finally``, also when the body raised or was cancelled, so a batch
whose rows were not all written is held (:func:`written_or_held`) and the worker crashes: its offsets
stay uncommitted and the events are read again after the restart. So processing is at-least-once,
and the ``persons`` agent makes replays harmless with a per-team watermark of applied offsets (see
docs/identity.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import faust
import ujson
from aiokafka import AIOKafkaProducer

from eventpipe.config import Settings
from eventpipe.contract import RawEvent, dead_letter, now_ts
from eventpipe.kafka import RegistryReader, ensure_topics, producer, resolved_replication_factor, topics_for
from eventpipe.supervisor import clear_ready, mark_ready
from processors.identity import State
from processors.transform import already_applied, process_with_persons, replay_rows, unknown_team

log = logging.getLogger("eventpipe.processors")

# faust-streaming 0.15's exactly_once left transactions uncommitted against Kafka 4.1 in our tests.
PROCESSING_GUARANTEE = "at_least_once"
BATCH = 1000
BATCH_WINDOW_S = 0.02
# Faust's default session timeout is 60 s: after a worker is SIGKILLed the group's rebalance waits that
# long for the dead member, and with eager rebalancing every partition of every worker stalls meanwhile
# (58 s measured in tests/test_it_identity.py's kill test). The heartbeat runs on the consumer's own
# thread, so a busy agent does not starve it.
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 1.0


def _dumps(obj: object) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False).encode()


class Outbox:
    """Rows of one batch: sent without waiting, then all acks awaited at once (no per-event round trip)."""

    def __init__(self, prod: AIOKafkaProducer) -> None:
        self.prod = prod
        self.pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.pending.append(await self.prod.send(topic, value, key=key))

    async def rows(self, topic: str, rows: list[dict[str, Any]], key: str | None = None) -> None:
        for row in rows:
            await self.send(topic, _dumps(row), str(row[key]).encode() if key else None)

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        await asyncio.gather(*pending)


MAX_ENVELOPE_BYTES = 512 * 1024  # well under Kafka's default 1 MB message limit


class TakenEvent(faust.Event):
    """A Faust event whose ack counts only if an agent took it (the app's ``Event`` class).

    faust-streaming's Stream skips a message that reaches it while a rebalance is under way (flow
    control suspended, or fetched under the previous generation) and acks it anyway, "otherwise the
    lag would increase": its offset became committable though no agent saw it, and a worker that kept
    the partition committed past it - the event was lost (raw offset 5 of a partition the surviving
    worker kept never reached events_by_team, while the group's committed offset moved to the end).
    The agents mark each event they take (:func:`taking`); the ack of an event never taken is
    ignored, so its offset stays uncommitted and the seek to committed offsets that ends every
    rebalance reads it again.
    """

    __slots__ = ("taken",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken = False

    def ack(self) -> bool:
        if not self.taken:
            return False
        return bool(super().ack())


def taking(stream: faust.StreamT) -> faust.StreamT:
    """Mark every event ``stream`` hands to the agent as taken (a processor runs before take_events'
    buffer sees the event; a message the stream skips never gets here)."""

    def mark(value: Any) -> Any:
        event = stream.current_event
        if isinstance(event, TakenEvent):
            event.taken = True
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


def team_envelopes(team_id: int, values: list[bytes]) -> list[bytes]:
    """Raw events of one team, in order, as few ``{"team_id": N, "raws": [...]}`` messages as fit.

    One message per batch instead of per event: the persons agent's per-message Faust overhead is
    paid once per envelope. The raw JSON is spliced in, not re-encoded.
    """
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for value in values:
        if chunk and size + len(value) > MAX_ENVELOPE_BYTES:
            out.append(b'{"team_id":%d,"raws":[%s]}' % (team_id, b",".join(chunk)))
            chunk, size = [], 0
        chunk.append(value)
        size += len(value) + 1
    if chunk:
        out.append(b'{"team_id":%d,"raws":[%s]}' % (team_id, b",".join(chunk)))
    return out


def build_app(settings: Settings) -> faust.App:
    topics = topics_for(settings)
    app = faust.App(
        topics.group("processors"),
        broker=f"eventpipe://{settings.kafka_bootstrap}",
        store="memory://",
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
        table_standby_replicas=0,
        web_enabled=False,
        Event=TakenEvent,
        datadir=str(settings.home / "faust"),
    )
    raw_topic = app.topic(topics.raw_events, key_type=bytes, value_type=bytes)
    by_team = app.topic(topics.events_by_team, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    schema = faust.Schema(key_serializer="json", value_serializer="json")
    identity = app.Table("identity", default=None, partitions=settings.partitions, schema=schema)
    state = State(distinct_ids=identity, persons=identity, groups=identity)
    registry = RegistryReader(settings)
    edges: dict[str, AIOKafkaProducer] = {}
    started = asyncio.Event()

    @app.task
    async def start_edges() -> None:
        # Faust's producer buffer (the table changelog writes) blocks the agent at 100 pending
        # messages until they are acked; every event writes to the table, so that cap, not CPU, was
        # the processors' limit (bench/processors.py). Faust still flushes it before each commit.
        app.producer.buffer.max_messages = 2_000
        # aiokafka clients must be created inside the running loop, so not in build_app.
        edges["producer"] = producer(settings, linger_ms=5)
        await edges["producer"].start()
        await registry.start()
        started.set()

    async def outbox() -> Outbox:
        if not started.is_set():
            await started.wait()
        return Outbox(edges["producer"])

    async def dead(out: Outbox, reason: str, value: bytes, key: bytes | None) -> None:
        await out.send(topics.dead_letters, _dumps(dead_letter(reason, value, "processors", now_ts())), key)

    @app.agent(raw_topic)
    async def route(stream: faust.StreamT) -> None:
        async for events in taking(stream).take_events(BATCH, within=BATCH_WINDOW_S):
            async with written_or_held(app, events):
                await route_batch(events)

    async def route_batch(events: Sequence[faust.EventT]) -> None:
        out = await outbox()
        by_team_batch: dict[int, list[bytes]] = {}
        for event in events:
            value = event.value
            try:
                raw = RawEvent.from_json(value)
            except (ValueError, TypeError) as exc:
                await dead(out, f"unparseable raw event: {exc}", value, event.key)
                continue
            team_id = registry.team_id(raw.token)
            if team_id is None:
                team_id = await registry.resolve(raw.token)  # only unknown keys wait for a catch-up
            if team_id is None:
                await out.rows(topics.ingestion_warnings, unknown_team(raw).warnings)
                continue
            by_team_batch.setdefault(team_id, []).append(value)
        for team_id, values in by_team_batch.items():
            for envelope in team_envelopes(team_id, values):
                await out.send(topics.events_by_team, envelope, str(team_id).encode())
        await out.flush()

    @app.agent(by_team)
    async def persons(stream: faust.StreamT) -> None:
        async for events in taking(stream).take_events(BATCH, within=BATCH_WINDOW_S):
            async with written_or_held(app, events):
                await persons_batch(stream, events)

    async def persons_batch(stream: faust.StreamT, events: Sequence[faust.EventT]) -> None:
        out = await outbox()
        for event in events:
            try:
                envelope = ujson.loads(event.value)
                team_id = int(envelope["team_id"])
                raws = envelope["raws"]
            except (ValueError, KeyError, TypeError) as exc:
                await dead(out, f"unparseable team envelope: {exc!r}", event.value, event.key)
                continue
            results = apply_envelope(stream, event, team_id, raws)
            for rows, emitted, failed in results:
                if failed is not None:
                    await dead(out, failed, rows, event.key)
                    continue
                await out.rows(topics.person_distinct_ids, emitted.distinct_ids, "distinct_id")
                await out.rows(topics.persons, emitted.persons, "id")
                await out.rows(topics.groups, emitted.groups, "group_key")
                await out.rows(topics.events, rows.events, "uuid")
                await out.rows(topics.ingestion_warnings, rows.warnings)
        await out.flush()

    def apply_envelope(stream: faust.StreamT, event: Any, team_id: int, raws: list[Any]) -> list[Any]:
        """Apply one envelope's events to the team state, synchronously.

        Table writes go to the changelog partition of "the current event", which ``take_events``
        doesn't set per event. It is set here and restored before returning, with no ``await`` in
        between: take_events' buffer reads the stream's current event when the next message arrives,
        so leaving an older event there would pair a new message with the wrong event (and lose it).
        """
        previous = stream.current_event
        stream._set_current_event(event)
        results: list[Any] = []
        try:
            for index, obj in enumerate(raws):
                position = (event.message.partition, event.message.offset, index)
                try:
                    raw = RawEvent(**obj)
                    if already_applied(state, team_id, position):
                        rows, emitted = replay_rows(raw, team_id, state)
                    else:
                        rows, emitted = process_with_persons(raw, team_id, state, position)
                    results.append((rows, emitted, None))
                except Exception as exc:  # one poisonous event must not stall the team: dead-letter it
                    log.exception("event could not be processed")
                    results.append((ujson.dumps(obj).encode(), None, f"processing failed: {exc!r}"))
        finally:
            stream._set_current_event(previous)
        return results

    @app.on_before_shutdown.connect
    async def stop_edges(_sender: object, **_kwargs: object) -> None:
        clear_ready(settings, "processor")
        await registry.stop()
        if "producer" in edges:
            await edges["producer"].stop()

    @app.on_rebalance_complete.connect
    async def on_assigned(_sender: object, **_kwargs: object) -> None:
        mark_ready(settings, "processor")

    return app


FETCH_MAX_WAIT_MS = 50


def _shorten_faust_fetch_wait() -> None:
    """Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500`` and has no setting for it: with the
    second hop reading a topic the first hop writes in small bursts, the broker held each fetch up to
    1.5 s, leaving the worker idle most of the time. 50 ms measured 2.2-2.5x the events/s
    (bench/processors.py). Applied in the processors process only."""
    import aiokafka

    if getattr(aiokafka.AIOKafkaConsumer, "_eventpipe_patched", False):
        return
    original = aiokafka.AIOKafkaConsumer

    class Consumer(original):  # type: ignore[misc, valid-type]
        _eventpipe_patched = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("fetch_max_wait_ms") == 1500:
                kwargs["fetch_max_wait_ms"] = FETCH_MAX_WAIT_MS
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = Consumer  # type: ignore[misc]


def serve(settings: Settings) -> None:
    _shorten_faust_fetch_wait()
    # Topics must exist before the worker subscribes: Faust ignores a missing topic for good.
    asyncio.run(ensure_topics(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust wants one
    app = build_app(settings)
    worker = faust.Worker(app, loglevel="INFO")
    worker.execute_from_commandline()
