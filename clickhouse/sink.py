"""The sink: Kafka row topics -> batched ClickHouse inserts -> offset commits.

* Offsets are committed only after ClickHouse acknowledged the insert of every row below them, so a
  crash re-reads rows rather than losing them.
* Each batch is one (topic, partition) offset range and carries ``insert_deduplication_token =
  topic:partition:first-last``. Before inserting, the sink commits the batch's *start* offset with
  metadata ``pending:<last>``; a sink that restarts (or takes over the partition) reads that
  metadata and cuts its first batch at exactly the same offsets, so the re-sent block has the same
  token and ClickHouse stores it once.
* ClickHouse unreachable or overloaded: the same batch is retried with exponential backoff and
  jitter while consumption is paused (memory stays bounded, the consumer keeps its group membership).
* Rows ClickHouse refuses: the batch is bisected until the refused rows are isolated; they go to the
  dead-letter topic with the server's error, the rest is inserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ujson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from clickhouse.admin import build_admin_app
from clickhouse.batch import PartitionBuffer, dedup_token
from clickhouse.store import KafkaRow, Store, is_retryable, migrate, open_store
from eventpipe.config import Settings
from eventpipe.contract import dead_letter, now_ts
from eventpipe.files import write_private
from eventpipe.kafka import ensure_topics, producer, topics_for
from eventpipe.metrics import SinkMetrics
from eventpipe.supervisor import clear_ready, mark_ready, run_dir

log = logging.getLogger("eventpipe.sink")

PENDING = "pending:"
MAX_BACKOFF_S = 30.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Write and commit what we hold for partitions we are losing, so the next owner starts clean.
        # (Not while an insert is in flight: then the buffers are dropped; the committed pending
        # range makes the next owner re-cut the same batch.)
        for tp in revoked:
            if not self.sink.inserting:
                await self.sink.flush(tp, force=True)
            self.sink.buffers.pop(tp, None)
            self.sink.pinned.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink.load_pins(assigned)
        log.info("sink assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        mark_ready(self.sink.settings, "sink")


class Sink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = topics_for(settings)
        self.table_of = self.topics.sink_tables()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.buffers: dict[TopicPartition, PartitionBuffer] = {}
        self.pinned: dict[TopicPartition, int] = {}  # tp -> last offset of a batch that must be re-cut
        self.store: Store | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.dlq: AIOKafkaProducer | None = None
        self.metrics = SinkMetrics()
        self.inserting = False
        self._admin: web.AppRunner | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        # clickhouse-driver is blocking: one dedicated thread keeps the event loop (and the
        # Kafka fetcher) running while ClickHouse works.
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- start-up --------------------------------------------------------------------------------
    async def open(self) -> None:
        url = self.settings.store
        delay = 0.5
        while True:  # a ClickHouse server that is not up yet is waited for, not a crash
            try:
                self.store = await self._call(open_store, url, self.settings.clickhouse_cluster)
                await self._call(migrate, self.store)
                break
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                log.warning("ClickHouse %s unreachable (%r); retrying in %.1fs", url.redacted(), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        await self._serve_admin()
        log.info("sink store %s (ClickHouse %d.%d)", url.redacted(), *self.store.dialect.version)

    async def _serve_admin(self) -> None:
        """Loopback /metrics behind a bearer secret: EVENTPIPE_ADMIN_SECRET, or one made for this run and
        written with the endpoint's URL to ``<home>/run/sink-admin.json`` (0600) for the operator."""
        secret = self.settings.admin_secret or secrets.token_urlsafe(32)
        runner = web.AppRunner(build_admin_app(secret, self.metrics.render), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.admin_host, self.settings.admin_port)
        await site.start()
        self._admin = runner
        if not self.settings.admin_secret:
            port = runner.addresses[0][1]
            url = f"http://{self.settings.admin_host}:{port}/metrics"
            write_private(run_dir(self.settings) / "sink-admin.json", ujson.dumps({"url": url, "secret": secret}))

    async def start_consumer(self) -> None:
        await ensure_topics(self.settings)
        self.dlq = producer(self.settings)
        await self.dlq.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.topics.group("sink"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            max_poll_interval_ms=600_000,
            isolation_level="read_committed",  # never read rows of an aborted transaction
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.table_of), listener=_Rebalance(self))

    async def load_pins(self, assigned: list[TopicPartition]) -> None:
        """Read the pending batch ranges a previous owner committed before inserting."""
        assert self.consumer is not None
        # aiokafka's public committed() drops the metadata; the coordinator call returns it.
        committed = await self.consumer._coordinator.fetch_committed_offsets(assigned)
        for tp, meta in committed.items():
            if meta.metadata.startswith(PENDING) and meta.offset >= 0:
                self.pinned[tp] = int(meta.metadata[len(PENDING) :])
                log.info("%s:%d resumes a pending batch %d-%d", tp.topic, tp.partition, meta.offset, self.pinned[tp])

    # -- batching ----------------------------------------------------------------------------------
    def _next_batch(self, tp: TopicPartition, buf: PartitionBuffer, force: bool) -> list[KafkaRow] | None:
        pin = self.pinned.get(tp)
        if pin is not None:
            if buf.rows[-1].offset < pin and not force:
                return None  # wait until the whole pending range is back
            n = sum(1 for r in buf.rows if r.offset <= pin)
            self.pinned.pop(tp)
            return buf.take(n)
        if force or buf.due(time.monotonic(), self.settings.sink_batch_rows, self.settings.sink_batch_seconds):
            return buf.take(self.settings.sink_batch_rows)
        return None

    async def flush(self, tp: TopicPartition, force: bool = False) -> None:
        buf = self.buffers.get(tp)
        assert self.consumer is not None
        while buf is not None and buf.rows:
            rows = self._next_batch(tp, buf, force)
            if not rows:
                return
            first, last = rows[0].offset, rows[-1].offset
            table = self.table_of[tp.topic]
            token = dedup_token(tp.topic, tp.partition, rows)
            try:
                await self.consumer.commit({tp: OffsetAndMetadata(first, f"{PENDING}{last}")})
                self.inserting = True
                refused = await self._write(table, rows, token)
                await self._dead_letter(table, refused)
                await self.consumer.commit({tp: OffsetAndMetadata(last + 1, "")})
            except KafkaError as exc:
                # Not ours any more (rebalance) or Kafka trouble: the rows are re-read from the
                # committed offset; the pending range makes the re-sent batch deduplicate.
                log.warning(
                    "commit for %s:%d failed: %r; batch %d-%d will be re-read", tp.topic, tp.partition, exc, first, last
                )
                self.buffers.pop(tp, None)
                return
            finally:
                self.inserting = False
            self.metrics.rows.inc(table, len(rows) - len(refused))
            self.metrics.batches.inc(table)
            log.debug("batch %s inserted: %d rows", token, len(rows))

    async def _write(self, table: str, rows: list[KafkaRow], token: str) -> list[tuple[KafkaRow, str]]:
        """Insert ``rows``; returns the rows ClickHouse refused, with its error."""
        try:
            await self._insert_retrying(table, rows, token)
            return []
        except Exception as exc:
            if len(rows) == 1:
                return [(rows[0], str(exc).strip().splitlines()[0][:1000] if str(exc).strip() else repr(exc))]
            log.warning("batch %s refused (%r); bisecting to isolate the bad rows", token, exc)
            mid = len(rows) // 2  # deterministic halves, so a retry after a crash re-cuts them identically
            left = await self._write(table, rows[:mid], f"{token}/a")
            right = await self._write(table, rows[mid:], f"{token}/b")
            return left + right

    async def _insert_retrying(self, table: str, rows: list[KafkaRow], token: str) -> None:
        """Insert; retry forever while the failure is "ClickHouse unavailable", raise data errors."""
        assert self.store is not None and self.consumer is not None
        delay = 0.2
        paused = False
        try:
            while True:
                started = time.perf_counter()
                try:
                    await self._call(self.store.insert, table, rows, token)
                    self.metrics.insert_latency.observe(time.perf_counter() - started)
                    return
                except Exception as exc:
                    if not is_retryable(exc):
                        raise
                    self.metrics.retries.inc(table)
                    wait = delay * random.uniform(0.5, 1.5)  # jitter: replicas don't retry in lockstep
                    log.warning("insert %s (%d rows) failed: %r; retrying in %.1fs", token, len(rows), exc, wait)
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    # Poll while paused: keeps the group membership alive and fetches nothing new.
                    await self.consumer.getmany(timeout_ms=int(wait * 1000))
                    delay = min(delay * 2, MAX_BACKOFF_S)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.assignment())

    async def _dead_letter(self, table: str, refused: list[tuple[KafkaRow, str]]) -> None:
        if not refused:
            return
        assert self.dlq is not None
        futures = []
        for row, error in refused:
            letter = dead_letter(f"clickhouse refused row for {table}: {error}", row.value, "sink", now_ts())
            letter["partition"], letter["offset"] = row.partition, row.offset
            futures.append(await self.dlq.send(self.topics.dead_letters, ujson.dumps(letter).encode()))
        await asyncio.gather(*futures)  # acked before the offsets move past these rows
        self.metrics.dead_letters.inc(table, len(refused))
        log.warning("%d rows for %s refused by ClickHouse, sent to %s", len(refused), table, self.topics.dead_letters)

    # -- main loop ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.open()
        await self.start_consumer()
        assert self.consumer is not None
        log.info("sink consuming %s", ", ".join(self.table_of))
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=100, max_records=20_000)
                now = time.monotonic()
                for tp, messages in batches.items():
                    buf = self.buffers.get(tp)
                    if buf is None:
                        buf = self.buffers[tp] = PartitionBuffer(tp.topic, tp.partition)
                    for m in messages:
                        if m.value is not None:
                            buf.add(KafkaRow(m.value, m.timestamp, m.offset, m.partition), now)
                    if messages:
                        end = self.consumer.highwater(tp)
                        if end is not None:
                            self.metrics.lag.set(f"{tp.topic}:{tp.partition}", end - messages[-1].offset - 1)
                for tp in list(self.buffers):
                    await self.flush(tp)
            log.info("stopping: flushing %d buffered rows", sum(len(b.rows) for b in self.buffers.values()))
            for tp in list(self.buffers):
                await self.flush(tp, force=True)
        finally:
            await self.close()

    async def close(self) -> None:
        clear_ready(self.settings, "sink")
        if self.consumer is not None:
            with contextlib.suppress(KafkaError):
                await self.consumer.stop()
            self.consumer = None
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
