"""A stand-in for the gateway's Kafka producer in unit tests: ``send`` and the batch API
(``partitions_for``, ``create_batch``, ``send_batch``) that gateway/batcher.py uses, no broker."""

from __future__ import annotations

import asyncio
from typing import Any


class FakeBatch:
    """What ``AIOKafkaProducer.create_batch`` returns, as far as the gateway uses it."""

    def __init__(self, max_records: int = 1_000_000) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.max_records = max_records
        self._closed = False

    def append(self, *, timestamp: float | None, key: bytes, value: bytes) -> object | None:
        if self._closed or len(self.messages) >= self.max_records:
            return None
        self.messages.append((key, value))
        return object()

    def close(self) -> None:
        self._closed = True

    def closed(self) -> bool:
        return self._closed


class FakeProducer:
    """Records every message as (topic, value, key) in ``sent``; acks at once when ``ack`` is set (else
    never: a stuck broker); ``fail``: the n-th message's ack (or its batch's) is that error instead;
    ``record=False`` keeps only the count (a measurement of the gateway's memory must not hold them)."""

    def __init__(self, ack: bool = True, fail: dict[int, Exception] | None = None, partitions: int = 1,
                 batch_records: int = 1_000_000, record: bool = True) -> None:
        self.ack = ack
        self.record = record
        self.count = 0
        self.fail = fail or {}
        self.partitions = partitions
        self.batch_records = batch_records
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.batches: list[tuple[int, int]] = []  # (partition, messages) per send_batch
        self.pending: list[asyncio.Future[Any]] = []  # acks not given (ack=False), to resolve by hand

    def _ack(self, first: int, count: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed = [self.fail[i] for i in range(first, first + count) if i in self.fail]
        if failed:
            fut.set_exception(failed[0])
        elif self.ack:
            fut.set_result(None)
        else:
            self.pending.append(fut)
        return fut

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self._record([(topic, value, key)])
        return self._ack(self.count - 1, 1)

    def _record(self, messages: list[tuple[str, bytes, bytes]]) -> None:
        self.count += len(messages)
        if self.record:
            self.sent += messages

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_records)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        first = self.count
        self._record([(topic, value, key) for key, value in batch.messages])
        self.batches.append((partition, len(batch.messages)))
        return self._ack(first, len(batch.messages))

    async def stop(self) -> None:
        pass
