"""The sink: Kafka row topics -> batched ClickHouse inserts -> offset commits.

* Offsets are committed only after ClickHouse acknowledged the insert of every row below them (and
  the dead-letter topic every refused one), so a crash re-reads rows rather than losing them.
* Each batch is one (topic, partition) offset range and carries ``insert_deduplication_token =
  topic:partition:first-last``. Before inserting, the sink commits the batch's *start* offset with
  metadata ``pending:<last>``; a sink that restarts (or takes over the partition) reads that
  metadata and cuts its first batch at exactly the same offsets, so the re-sent block has the same
  token and ClickHouse stores it once. A pending range is re-cut whole or not at all.
* ClickHouse unreachable or overloaded (:mod:`clickhouse.failures`): the same batch is retried with
  exponential backoff and jitter while every partition is paused; the loop keeps polling Kafka (group
  membership, rebalances) and keeps whatever a poll returns.
* Rows ClickHouse refuses: the batch is bisected until the refused rows are isolated; exactly they go
  to the dead-letter topic with the server's error (:mod:`clickhouse.deadletter`: always small enough
  for the broker), the rest is inserted.
* Errors that are about neither the server's health nor the rows (grants, a read-only user, a missing
  table) stop the sink without committing: the supervisor restarts it, an operator sees why.

The logic lives in :mod:`clickhouse.steps` (testable with a fake consumer and store); this module only
wires it to aiokafka and clickhouse-driver: :meth:`Sink.pump` reads top to bottom as the diagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from clickhouse.failures import Kind, classify_store
from clickhouse.steps import (
    Committer,
    FlowControl,
    Partitions,
    PendingRanges,
    Record,
    Writer,
    next_batch,
)
from clickhouse.store import KafkaRow, Store, migrate, open_store
from eventpipe.admin import serve_admin
from eventpipe.config import Settings
from eventpipe.contract import now_ts
from eventpipe.kafka import ensure_topics, producer, topics_for
from eventpipe.metrics import SinkMetrics
from eventpipe.supervisor import clear_ready, mark_ready, run_dir

log = logging.getLogger("eventpipe.sink")

POLL_MS = 100  # how long a poll waits for records: also the loop's pace while backing off
WRITING_POLL_MS = 5  # the same while a write is in flight
FETCH_MAX_WAIT_MS = 100
MAX_RECORDS = 20_000  # per poll
DRAIN_S = 15.0  # on SIGTERM: how long to keep writing what is buffered before giving up (re-read later)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Nothing is inserted here: a batch in flight is finished by the next owner (it re-cuts the
        # committed pending range; the same token dedups an insert of ours that completes late).
        # Buffers go: the consumer re-reads from the committed offset whoever owns the partition next.
        await self.sink.committer.revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        sink = self.sink
        sink.partitions.assign(assigned)
        sink.flow.apply(sink.holding())  # before any await: mid-outage, a new assignment starts paused
        await sink.pending.load()
        log.info("sink assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        mark_ready(sink.settings, "sink")


class Sink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = topics_for(settings)
        self.table_of = self.topics.sink_tables()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.store: Store | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.dlq: AIOKafkaProducer | None = None
        self.offsets: AIOKafkaAdminClient | None = None
        self.metrics = SinkMetrics()
        self.partitions = Partitions()
        self._admin: web.AppRunner | None = None
        self.draining = False

    async def _call(self, fn: Any, *args: Any) -> Any:
        # clickhouse-driver is blocking: one dedicated thread keeps the event loop (and the
        # Kafka fetcher) running while ClickHouse works.
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- start-up --------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect to ClickHouse and migrate — or, if it is unreachable now, go on: the sink joins its
        consumer group anyway (a sink started during an outage takes its share of partitions and holds
        them paused) and the first insert connects, retried like any insert while ClickHouse is away."""
        try:
            await self._connect()
        except Exception as exc:
            if classify_store(exc) is not Kind.TRANSIENT:
                raise
            log.warning("ClickHouse %s unreachable (%r); inserts wait for it", self.settings.store.redacted(), exc)
        await self._serve_admin()

    async def _connect(self) -> None:
        url = self.settings.store
        store = await self._call(open_store, url, self.settings.clickhouse_cluster)
        try:
            await self._call(migrate, store)
        except BaseException:
            await self._call(store.close)
            raise
        self.store = store
        log.info("sink store %s (ClickHouse %d.%d)", url.redacted(), *store.dialect.version)

    async def _serve_admin(self) -> None:
        """Loopback /metrics behind a bearer secret: EVENTPIPE_ADMIN_SECRET, or one made for this run and
        written with the endpoint's URL to ``<home>/run/sink-admin.json`` (0600) for the operator."""
        run_file = run_dir(self.settings) / "sink-admin.json"
        self._admin = await serve_admin(self.settings, self.metrics.render, self.settings.admin_port, run_file)

    async def start_kafka(self) -> None:
        await ensure_topics(self.settings)
        self.dlq = producer(self.settings)
        await self.dlq.start()
        # Committed offsets *with their metadata* (the pending ranges): the admin client's public
        # list_consumer_group_offsets returns both, the consumer's committed() only the offset.
        self.offsets = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=10_000)
        await self.offsets.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.topics.group("sink"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            max_poll_interval_ms=600_000,
            # aiokafka leaves partitions with buffered records out of the next fetch and sends one request
            # per broker at a time: one holding only idle row topics (groups, warnings, ...) was parked for
            # the default 500 ms while the events partitions waited.
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            isolation_level="read_committed",  # never read rows of an aborted transaction
        )
        await self.consumer.start()
        self.wire()
        self.consumer.subscribe(list(self.table_of), listener=_Rebalance(self))

    def wire(self) -> None:
        """The steps around the consumer (unit tests call this with fakes in place of the clients)."""
        assert self.consumer is not None
        self.committer = Committer(self.consumer, self.partitions)
        self.pending = PendingRanges(self._read_committed, self.partitions)
        self.writer = Writer(self.committer, self._insert, self._send_letters, self.metrics, now_ts, self._rewind)
        # Bounded memory: a partition holding two batches' worth stops fetching until one is written.
        self.flow = FlowControl(self.consumer, self.partitions, max_buffered=2 * self.settings.sink_batch_rows)

    # -- the edges the steps call ------------------------------------------------------------------
    async def _insert(self, table: str, rows: list[KafkaRow], token: str) -> None:
        if self.store is None:  # ClickHouse was unreachable so far: its errors are the insert's
            await self._connect()
        assert self.store is not None
        await self._call(self.store.insert, table, rows, token)

    async def _send_letters(self, letters: list[bytes]) -> None:
        assert self.dlq is not None
        futures = [await self.dlq.send(self.topics.dead_letters, letter) for letter in letters]
        await asyncio.gather(*futures)

    async def _read_committed(self, tps: list[TopicPartition]) -> Mapping[TopicPartition, OffsetAndMetadata]:
        assert self.offsets is not None
        return await self.offsets.list_consumer_group_offsets(self.topics.group("sink"), partitions=tps)

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        assert self.consumer is not None
        with contextlib.suppress(IllegalStateError):  # unassigned meanwhile: the next owner reads it
            self.consumer.seek(tp, offset)

    def holding(self) -> bool:
        """Every partition paused: ClickHouse (or Kafka) is being waited out, or the sink drains."""
        return self.draining or self.writer.backing_off()

    def _observe_lag(self, fetched: Mapping[TopicPartition, list[Record]]) -> None:
        assert self.consumer is not None
        for tp, messages in fetched.items():
            end = self.consumer.highwater(tp) if messages else None
            if end is not None:
                self.metrics.lag.set(f"{tp.topic}:{tp.partition}", end - messages[-1].offset - 1)

    # -- main loop ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.open()  # connects to ClickHouse and migrates (or leaves that to the first insert)
            await self.start_kafka()
            log.info("sink consuming %s", ", ".join(self.table_of))
            await self.pump(stop)
        finally:
            await self.close()

    async def pump(self, stop: asyncio.Event) -> None:
        """fetch -> buffer -> pending ranges -> cut -> write (pending commit, insert/bisect, dead
        letters, commit) -> pause/resume; until stopped, then the same while draining.

        The write runs as its own task while the loop goes on fetching: an insert is mostly the server's
        work, and decoding the next batch's records meanwhile is what keeps ClickHouse busy back to back
        (sequentially, the loop and the server took turns and each idled about half the time)."""
        assert self.consumer is not None
        s = self.settings
        deadline = 0.0
        write: asyncio.Task[None] | None = None
        try:
            while True:
                if stop.is_set() and not self.draining:
                    self.draining, deadline = True, time.monotonic() + DRAIN_S
                    log.info("stopping: writing %d buffered rows", self.partitions.buffered())
                # While a write is in flight, poll briefly so its end is noticed promptly.
                timeout = POLL_MS if write is None else WRITING_POLL_MS
                fetched = await self.consumer.getmany(timeout_ms=timeout, max_records=MAX_RECORDS)
                self.partitions.add(fetched, time.monotonic())  # every record returned is kept
                self._observe_lag(fetched)
                await self.pending.load()  # newly assigned partitions cut nothing before this
                if write is not None and write.done():
                    write, done = None, write
                    done.result()  # SinkFailed (fatal) ends the loop here
                if write is None:
                    if self.writer.idle:
                        batch = next_batch(
                            self.partitions,
                            self.table_of,
                            time.monotonic(),
                            s.sink_batch_rows,
                            s.sink_batch_seconds,
                            force=self.draining,
                        )
                        if batch is not None:
                            self.writer.submit(batch)
                    if not self.writer.idle and not self.writer.backing_off():  # a new batch, or a retry due
                        write = asyncio.create_task(self.writer.poll())
                self.flow.apply(self.holding())
                if self.draining and ((write is None and self.writer.idle) or time.monotonic() >= deadline):
                    if not self.writer.idle:
                        log.warning("stopping with a batch unwritten; it is re-cut from its pending range")
                    return
        finally:
            if write is not None and not write.done():
                # The drain's deadline passed mid-write: the insert thread finishes on its own (the
                # store closes after it); offsets stay at the pending range, which is re-cut whole.
                write.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await write

    async def close(self) -> None:
        clear_ready(self.settings, "sink")
        if self.consumer is not None:
            with contextlib.suppress(KafkaError):
                await self.consumer.stop()
            self.consumer = None
        if self.offsets is not None:
            with contextlib.suppress(KafkaError):
                await self.offsets.close()
            self.offsets = None
        if self.dlq is not None:
            await self.dlq.stop()
            self.dlq = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        if self.store is not None:
            await self._call(self.store.close)
            self.store = None
        self.executor.shutdown(wait=True)


def serve(settings: Settings) -> None:
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Sink(settings).run(stop)
        log.info("sink stopped cleanly")

    asyncio.run(main())
