"""The gateway's messages in Kafka batches it fills itself: one future per batch instead of per message.

``AIOKafkaProducer.send`` costs ~10 µs of Python per message (a coroutine, metadata, partitioner,
size estimate, a future and, at the ack, a RecordMetadata and a callback per message); that was a
quarter of the gateway's CPU per event. :class:`Batcher` appends every message of every concurrent
request to an open batch per partition (``create_batch``, ``BatchBuilder.append``: ~1.5 µs) and
hands batches to the producer with ``send_batch``: each request then waits for the few batches its
messages went into. The producer is the same (acks=all, idempotence, compression, retries); Kafka
acknowledges a batch as a whole, so every message of a request is acknowledged when its batches are.

Per partition one batch is with the producer at a time, and the next one fills meanwhile; it is
closed and handed over when the previous one is acknowledged (or at once when none is out). This is
what the producer's own accumulator does with idempotence (one batch in flight per partition), with
a closed batch instead of a 5 ms linger, so a quiet gateway sends at once and a busy one sends large
batches. Messages keep their order within a partition: batches are appended and handed over in order.

Partitions are chosen like the producer's default partitioner (:class:`eventpipe.kafka.CachedPartitioner`:
murmur2 of the key), which the processors' routing relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed

from eventpipe.kafka import CachedPartitioner

if TYPE_CHECKING:
    from aiokafka.producer.message_accumulator import BatchBuilder


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a batch whose requests all gave up already must not log "never retrieved"


class _Batch:
    __slots__ = ("acked", "builder")

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acked.add_done_callback(_retrieved)


class Batcher:
    """Batches for one topic; the producer is the one given to :meth:`add` (the app's, set at its start)."""

    def __init__(self, topic: str, partitioner: CachedPartitioner | None = None) -> None:
        self.producer: AIOKafkaProducer | None = None
        self.topic = topic
        self.partitioner = partitioner or CachedPartitioner()
        self._filling: dict[int, deque[_Batch]] = {}  # per partition: batches not handed over, the last one open
        self._sending: dict[int, _Batch] = {}  # per partition: the batch with the producer, not acknowledged yet
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(
        self, producer: AIOKafkaProducer, messages: Iterable[tuple[bytes, bytes]]
    ) -> list[asyncio.Future[None]]:
        """Append ``messages`` (key, value) to their partitions' open batches; the futures of the batches
        they went into, done when Kafka acknowledged them. They are shared by requests: wait for them
        with :meth:`all_acked`, never cancel them."""
        self.producer = producer
        partitions = sorted(await producer.partitions_for(self.topic))
        choose = self.partitioner
        filling = self._filling
        batches: dict[int, _Batch] = {}
        touched: list[_Batch] = []
        for key, value in messages:
            p = choose(key, partitions, partitions)
            queue = filling.get(p)
            if queue is None:
                queue = filling[p] = deque()
            batch = queue[-1] if queue else None
            if batch is None or batch.builder.append(timestamp=None, key=key, value=value) is None:
                # Full, or none yet. A new batch always takes its first message (the producer's request
                # size bounds it; the gateway's event size limit is below that).
                batch = _Batch(producer.create_batch())
                batch.builder.append(timestamp=None, key=key, value=value)
                queue.append(batch)
            if batches.get(p) is not batch:
                batches[p] = batch
                touched.append(batch)
        for p in batches:
            self._hand_over(p)
        return [b.acked for b in touched]

    def _hand_over(self, partition: int) -> None:
        """Give the partition's oldest filling batch to the producer, unless one is with it already."""
        queue = self._filling.get(partition)
        if partition in self._sending or not queue:
            return
        batch = queue.popleft()
        batch.builder.close()  # nothing more goes in once it is the producer's
        self._sending[partition] = batch
        task = asyncio.get_running_loop().create_task(self._send(partition, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, partition: int, batch: _Batch) -> None:
        assert self.producer is not None  # set by the add that made the batch
        try:
            acked = await self.producer.send_batch(batch.builder, self.topic, partition=partition)
            await acked
        except asyncio.CancelledError:
            if not batch.acked.done():
                batch.acked.set_exception(ProducerClosed())
            raise
        except Exception as exc:
            if not batch.acked.done():
                batch.acked.set_exception(exc)
        else:
            if not batch.acked.done():
                batch.acked.set_result(None)
        finally:
            del self._sending[partition]
            self._hand_over(partition)

    @staticmethod
    def all_acked(acks: list[asyncio.Future[Any]]) -> asyncio.Future[None]:
        """A future of this request alone, done when all ``acks`` are (the first failure fails it): the
        batches' futures are shared by requests, so a request that stops waiting must not cancel them."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        remaining = len(acks)

        def one(ack: asyncio.Future[Any]) -> None:
            nonlocal remaining
            if done.done():
                ack.cancelled() or ack.exception()  # retrieved: asyncio logs unretrieved ones
                return
            if ack.cancelled():
                done.set_exception(ProducerClosed())
                return
            if (exc := ack.exception()) is not None:
                done.set_exception(exc)
                return
            remaining -= 1
            if remaining == 0:
                done.set_result(None)

        if not acks:
            done.set_result(None)
        for ack in acks:
            ack.add_done_callback(one)
        return done

    async def flush(self) -> None:
        """Hand over and wait for every batch (at shutdown, before the producer stops)."""
        while self._sending or any(self._filling.values()):
            for p in list(self._filling):
                self._hand_over(p)
            pending = [b.acked for b in self._sending.values()]
            if pending:
                await asyncio.wait(pending)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
