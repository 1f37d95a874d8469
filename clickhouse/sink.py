"""The sink: Kafka row topics -> batched ClickHouse inserts -> offset commits.

Offsets are committed only after ClickHouse acknowledged the insert of every row below them, so a
crash re-reads rows rather than losing them; each batch carries an ``insert_deduplication_token``
naming its offset range so a re-sent range is stored once. While an insert keeps failing the sink
retries the same batch with backoff and pauses consumption (backpressure instead of memory growth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from clickhouse.admin import build_admin_app
from clickhouse.batch import PartitionBuffer, dedup_token
from clickhouse.owner import DirLock, OwnerInfo, new_secret
from clickhouse.store import KafkaRow, Store, migrate, open_store
from eventpipe.config import Settings
from eventpipe.kafka import ensure_topics, topics_for
from eventpipe.supervisor import mark_ready

log = logging.getLogger("eventpipe.sink")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Write and commit what we hold for partitions we are losing, so the next owner starts clean.
        for tp in revoked:
            await self.sink.flush(tp, force=True)
            self.sink.buffers.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("sink assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        mark_ready(self.sink.settings, "sink")


class Sink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table_of = topics_for(settings).sink_tables()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.buffers: dict[TopicPartition, PartitionBuffer] = {}
        self.store: Store | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.rows_written = 0
        self._lock: DirLock | None = None
        self._admin: web.AppRunner | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        # chDB and clickhouse-driver are blocking: one dedicated thread keeps the event loop (and the
        # Kafka fetcher) running while ClickHouse works.
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def open(self) -> None:
        url = self.settings.store
        if url.kind == "chdb":
            assert url.path is not None
            self._lock = DirLock(url.path)
            self._lock.acquire()
        self.store = await self._call(open_store, url)
        await self._call(migrate, self.store)
        if url.kind == "chdb":
            await self._serve_admin()
        log.info("sink store %s (ClickHouse %d.%d)", url.redacted(), *self.store.dialect.version)

    async def _serve_admin(self) -> None:
        assert self.store is not None and self.settings.store.path is not None
        secret = self.settings.admin_secret or new_secret()
        runner = web.AppRunner(build_admin_app(self.store, self.executor, secret), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.admin_host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        OwnerInfo(os.getpid(), f"http://{self.settings.admin_host}:{port}", secret).write(self.settings.store.path)
        self._admin = runner

    async def start_consumer(self) -> None:
        await ensure_topics(self.settings)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=topics_for(self.settings).group("sink"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            max_poll_interval_ms=600_000,
            isolation_level="read_committed",  # never read rows of an aborted transaction
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.table_of), listener=_Rebalance(self))

    async def flush(self, tp: TopicPartition, force: bool = False) -> None:
        buf = self.buffers.get(tp)
        if buf is None or not buf.rows:
            return
        max_rows = self.settings.sink_batch_rows
        while buf.rows and (force or buf.due(time.monotonic(), max_rows, self.settings.sink_batch_seconds)):
            rows = buf.take(max_rows)
            await self._insert_until_done(self.table_of[tp.topic], tp, rows)
            assert self.consumer is not None
            try:
                await self.consumer.commit({tp: rows[-1].offset + 1})
            except (CommitFailedError, KafkaError) as exc:
                # The rows are in ClickHouse; the next owner re-reads them and the token dedups.
                log.warning("commit of %s:%d failed after insert: %r", tp.topic, tp.partition, exc)
            self.rows_written += len(rows)

    async def _insert_until_done(self, table: str, tp: TopicPartition, rows: list[KafkaRow]) -> None:
        assert self.store is not None and self.consumer is not None
        token = dedup_token(tp.topic, tp.partition, rows)
        delay = 0.2
        while True:
            try:
                await self._call(self.store.insert, table, rows, token)
                return
            except Exception as exc:  # any store error: the same batch is retried, never skipped
                log.warning("insert of %d rows into %s failed (%r); retrying in %.1fs", len(rows), table, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

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
                for tp in list(self.buffers):
                    await self.flush(tp)
            for tp in list(self.buffers):
                await self.flush(tp, force=True)
        finally:
            await self.close()

    async def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(KafkaError):
                await self.consumer.stop()
            self.consumer = None
        if self._admin is not None:
            assert self.settings.store.path is not None
            OwnerInfo.remove(self.settings.store.path)
            await self._admin.cleanup()
            self._admin = None
        if self.store is not None:
            await self._call(self.store.close)
            self.store = None
        self.executor.shutdown(wait=True)
        if self._lock is not None:
            self._lock.release()


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
