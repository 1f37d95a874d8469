"""gateway/batcher.py: the gateway's own Kafka batches, with a fake producer."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner

from gateway.batcher import Batcher
from tests.fakes import FakeProducer

TOPIC = "t_events_raw"


def messages(request: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"1:user-{i % 7}".encode(), f"{request}:{i}".encode()) for i in range(n)]


def by_partition(producer: FakeProducer) -> dict[int, list[bytes]]:
    """The values each partition got, in order (the fake records a batch's messages as sent)."""
    out: dict[int, list[bytes]] = defaultdict(list)
    partitions = list(range(producer.partitions))
    for _topic, value, key in producer.sent:
        out[DefaultPartitioner()(key, partitions, partitions)].append(value)
    return out


async def stuck_requests(sizes: list[int]) -> tuple[FakeProducer, Batcher, list[asyncio.Future[None]]]:
    """Requests of ``sizes`` messages to one partition of a producer that acks only by hand."""
    producer, batcher = FakeProducer(ack=False, partitions=1), Batcher(TOPIC)
    requests = [Batcher.all_acked(await batcher.add(producer, messages(r, n))) for r, n in enumerate(sizes)]
    await asyncio.sleep(0.01)
    return producer, batcher, requests


def test_a_requests_messages_go_to_the_default_partitioners_partitions_in_order() -> None:
    async def main() -> None:
        producer, batcher = FakeProducer(partitions=4), Batcher(TOPIC)
        await Batcher.all_acked(await batcher.add(producer, messages(0, 50)))
        assert len(producer.sent) == 50 and {t for t, _v, _k in producer.sent} == {TOPIC}
        expected: dict[int, list[bytes]] = defaultdict(list)
        for key, value in messages(0, 50):
            expected[DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])].append(value)
        assert by_partition(producer) == expected
        # ... and each batch went to the partition its messages belong to
        assert sorted(p for p, _n in producer.batches) == sorted(expected)

    asyncio.run(main())


def test_one_batch_per_partition_with_the_producer_the_next_fills_meanwhile() -> None:
    async def main() -> None:
        producer, _batcher, (first, second, third) = await stuck_requests([3, 4, 5])
        assert producer.batches == [(0, 3)]  # the others wait for its ack, filling one batch
        producer.pending.pop(0).set_result(None)
        await asyncio.wait_for(first, 1)
        await asyncio.sleep(0.01)
        assert producer.batches == [(0, 3), (0, 9)] and not second.done() and not third.done()
        producer.pending.pop(0).set_result(None)
        await asyncio.wait_for(asyncio.gather(second, third), 1)
        assert [v for _t, v, _k in producer.sent] == [v for r, n in ((0, 3), (1, 4), (2, 5))
                                                        for _k, v in messages(r, n)]

    asyncio.run(main())


def test_a_full_batch_starts_the_next_one() -> None:
    async def main() -> None:
        producer, batcher = FakeProducer(partitions=1, batch_records=10), Batcher(TOPIC)
        await Batcher.all_acked(await batcher.add(producer, messages(0, 35)))
        assert [n for _p, n in producer.batches] == [10, 10, 10, 5]

    asyncio.run(main())


def test_a_failed_batch_fails_every_request_in_it_and_later_ones_go_on() -> None:
    async def main() -> None:
        producer, batcher, (first, second, third) = await stuck_requests([2, 2, 2])
        producer.pending.pop(0).set_exception(KafkaTimeoutError())
        with pytest.raises(KafkaTimeoutError):
            await first
        await asyncio.sleep(0.01)
        producer.pending.pop(0).set_exception(KafkaTimeoutError())
        for request in (second, third):  # one batch: both fail
            with pytest.raises(KafkaTimeoutError):
                await request
        later = Batcher.all_acked(await batcher.add(producer, messages(3, 2)))
        await asyncio.sleep(0.01)
        producer.pending.pop(0).set_result(None)
        await asyncio.wait_for(later, 1)

    asyncio.run(main())


def test_a_request_that_stops_waiting_does_not_cancel_the_shared_batch() -> None:
    async def main() -> None:
        producer, _batcher, waiting = await stuck_requests([1, 1])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiting[0], 0.01)  # cancels that request's own future only
        producer.pending.pop(0).set_result(None)
        await asyncio.sleep(0.01)
        producer.pending.pop(0).set_result(None)
        await asyncio.wait_for(waiting[1], 1)

    asyncio.run(main())


def test_flush_hands_over_and_waits_for_every_batch() -> None:
    async def main() -> None:
        producer, batcher = FakeProducer(partitions=4), Batcher(TOPIC)
        acks = []
        for r in range(5):
            acks += await batcher.add(producer, messages(r, 20))
        await batcher.flush()
        assert all(a.done() for a in acks) and len(producer.sent) == 100

    asyncio.run(main())
