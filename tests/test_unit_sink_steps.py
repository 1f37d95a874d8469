"""The sink's steps and its loop against a fake consumer, a fake store and a fake dead-letter producer
(no broker, no server). Each test names the defect of issue 10 it guards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import ujson
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from clickhouse_driver import errors

from clickhouse.batch import PartitionBuffer, cut
from clickhouse.sink import Sink, _Rebalance
from clickhouse.steps import Backoff, Committer, Partitions, SinkFailed, Writer, next_batch
from clickhouse.store import _TOKEN, KafkaRow
from eventpipe.config import Settings
from eventpipe.metrics import SinkMetrics

TOPIC = "p_clickhouse_events"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
TABLES = {TOPIC: "events"}


def value(offset: int) -> bytes:
    return ujson.dumps({"n": offset}).encode()


# -- fakes -----------------------------------------------------------------------------------------


class Broker:
    """Partition logs and the group's committed offsets."""

    def __init__(self, rows: dict[TopicPartition, int] | None = None) -> None:
        self.logs: dict[TopicPartition, list[bytes | None]] = {}
        self.committed: dict[TopicPartition, OffsetAndMetadata] = {}
        self.commit_log: list[tuple[TopicPartition, int, str]] = []
        for tp, n in (rows or {}).items():
            self.append(tp, n)

    def append(self, tp: TopicPartition, n: int) -> None:
        log = self.logs.setdefault(tp, [])
        log += [value(len(log) + i) for i in range(n)]

    def offsets_of(self, tp: TopicPartition) -> list[int]:
        return [o for t, o, m in self.commit_log if t == tp]


class FakeConsumer:
    """AIOKafkaConsumer's public surface the sink uses, with aiokafka's rules: pause/seek/commit of an
    unassigned partition raise IllegalStateError, a new assignment starts unpaused at the committed offset."""

    def __init__(self, broker: Broker, fetch_size: int = 1_000) -> None:
        self.broker, self.fetch_size = broker, fetch_size
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self.position: dict[TopicPartition, int] = {}
        self.fetch_while_paused = 0  # polls that still return records of paused partitions (fetches in flight)
        self.commit_gate: Callable[[TopicPartition, OffsetAndMetadata], Awaitable[None]] | None = None
        self.commit_errors: list[Exception] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return self._paused & self._assigned

    def _check(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            if tp not in self._assigned:
                raise IllegalStateError(f"No current assignment for partition {tp}")

    def pause(self, *tps: TopicPartition) -> None:
        self._check(tps)
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._check(tps)
        self._paused -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check([tp])
        self.position[tp] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.broker.logs.get(tp, []))

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._check(offsets)
        for tp, om in offsets.items():
            if self.commit_gate is not None:
                await self.commit_gate(tp, om)
            if self.commit_errors:
                raise self.commit_errors.pop(0)
            self._check([tp])
            self.broker.committed[tp] = om
            self.broker.commit_log.append((tp, om.offset, om.metadata))

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.001)
        leak = self.fetch_while_paused > 0
        self.fetch_while_paused = max(0, self.fetch_while_paused - 1)
        out = {}
        for tp in sorted(self._assigned):
            if tp in self._paused and not leak:
                continue
            pos = self.position[tp]
            chunk = self.broker.logs.get(tp, [])[pos : pos + self.fetch_size]
            if chunk:
                out[tp] = [
                    ConsumerRecord(tp.topic, tp.partition, pos + i, 1_700_000_000_000, 0, None, v, None, 0, 0, ())
                    for i, v in enumerate(chunk)
                ]
                self.position[tp] = pos + len(chunk)
        return out

    async def rebalance(self, listener: _Rebalance, new: set[TopicPartition]) -> None:
        """An eager rebalance as aiokafka runs it: revoke all, then assign (positions from committed)."""
        await listener.on_partitions_revoked(list(self._assigned))
        self._assigned, self._paused = set(new), set()
        for tp in new:
            committed = self.broker.committed.get(tp)
            self.position[tp] = committed.offset if committed else 0
        await listener.on_partitions_assigned(list(new))

    async def stop(self) -> None:
        pass


class FakeAdmin:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: list[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: self.broker.committed.get(tp, OffsetAndMetadata(-1, "")) for tp in partitions or []}

    async def close(self) -> None:
        pass


class FakeStore:
    """ClickHouse as the sink sees it: refuses blocks holding a bad row (with a real driver error),
    can be down, and keeps one block per insert_deduplication_token."""

    def __init__(self, bad: Iterable[int] = (), refusal: Callable[[int], Exception] | None = None) -> None:
        self.bad = set(bad)
        self.refusal = refusal or (
            lambda o: errors.ServerException(f"DB::Exception: Cannot parse input: row at offset {o}", code=27)
        )
        self.down: Exception | None = None
        self.calls: list[str] = []
        self.blocks: dict[str, list[tuple[int, int]]] = {}
        self.gate: Callable[[], None] | None = None

    def insert(self, table: str, rows: list[KafkaRow], token: str) -> None:
        assert _TOKEN.match(token), token  # the store's own check of the token
        self.calls.append(token)
        if self.gate is not None:
            self.gate()
        if self.down is not None:
            raise self.down
        bad = [r.offset for r in rows if r.offset in self.bad]
        if bad:
            raise self.refusal(bad[0])
        self.blocks.setdefault(token, [(r.partition, r.offset) for r in rows])

    def stored(self, partition: int = 0) -> list[int]:
        return sorted(o for block in self.blocks.values() for p, o in block if p == partition)

    def close(self) -> None:
        pass


class FakeProducer:
    def __init__(self, max_bytes: int = 1_048_576) -> None:
        self.max_bytes = max_bytes
        self.sent: list[dict[str, Any]] = []
        self.errors: list[Exception] = []

    async def send(self, topic: str, value: bytes) -> asyncio.Future[None]:
        if self.errors:
            raise self.errors.pop(0)
        if len(value) > self.max_bytes:
            raise MessageSizeTooLargeError()
        self.sent.append(ujson.loads(value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def stop(self) -> None:
        pass


async def until(cond: Callable[[], object], within: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``within`` seconds (the loop under test runs meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {within}s")
        await asyncio.sleep(0.005)


# -- a writer with fakes ---------------------------------------------------------------------------


class Rig:
    """Partitions + committer + writer over a fake consumer and store, driven by hand."""

    def __init__(self, broker: Broker, store: FakeStore, tps: Iterable[TopicPartition] = (TP0,)) -> None:
        self.broker, self.store = broker, store
        self.consumer = FakeConsumer(broker)
        self.partitions = Partitions()
        self.committer = Committer(self.consumer, self.partitions)
        self.dlq = FakeProducer()
        self.clock = 0.0
        self.writer = Writer(
            self.committer,
            self._insert,
            self._send,
            SinkMetrics(),
            lambda: "2024-01-01 00:00:00.000000",
            self.consumer.seek,
            Backoff(first=1.0, cap=8.0),
            clock=lambda: self.clock,
        )
        self.assign(set(tps))

    async def _insert(self, table: str, rows: list[KafkaRow], token: str) -> None:
        self.store.insert(table, rows, token)

    async def _send(self, letters: list[bytes]) -> None:
        await asyncio.gather(*[await self.dlq.send("dlq", v) for v in letters])

    def assign(self, tps: set[TopicPartition]) -> None:
        self.consumer._assigned = set(tps)
        for tp in tps:
            c = self.broker.committed.get(tp)
            self.consumer.position[tp] = c.offset if c else 0
        self.partitions.assign(tps)
        for tp in tps:
            self.partitions.load(tp, self.broker.committed.get(tp))

    async def fetch(self) -> None:
        self.partitions.add(await self.consumer.getmany(), self.clock)

    async def write_all(self, max_rows: int, force: bool = True) -> None:
        """Cut and write until nothing is left, stepping the clock over every backoff."""
        for _ in range(10_000):
            await self.fetch()
            if self.writer.backing_off():
                self.clock = self.writer.retry_at
            await self.writer.poll()
            if self.writer.idle:
                batch = next_batch(self.partitions, TABLES, self.clock, max_rows, 0.0, force)
                if batch is None:
                    return
                self.writer.submit(batch)
                await self.writer.poll()
        raise AssertionError("did not finish")


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


# -- bisection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{0}, {517}, {999}, {3, 517, 998}, {10, 11, 12}, set(range(0, 1000, 97))])
def test_bisection_dead_letters_exactly_the_refused_rows(bad: set[int]) -> None:
    # Defect: halves were named <token>/a, which the store's token check refuses, so one bad row sent the
    # whole batch to the dead-letter topic. Now: exactly the bad rows, with the server's error.
    async def main() -> None:
        rig = Rig(Broker({TP0: 1000}), FakeStore(bad))
        await rig.write_all(max_rows=1000)
        assert rig.store.stored() == [o for o in range(1000) if o not in bad]
        assert sorted(letter["offset"] for letter in rig.dlq.sent) == sorted(bad)
        for letter in rig.dlq.sent:
            assert letter["raw"] == value(letter["offset"]).decode()
            assert f"Code: 27. DB::Exception: Cannot parse input: row at offset {letter['offset']}" in letter["reason"]
            assert (letter["topic"], letter["partition"]) == (TOPIC, 0)
        assert rig.broker.commit_log == [(TP0, 0, "pending:999"), (TP0, 1000, "")]

    run(main())


def test_a_driver_side_type_mismatch_is_bisected_too() -> None:
    store = FakeStore({42}, refusal=lambda o: errors.TypeMismatchError("Column team_id: argument out of range"))

    async def main() -> None:
        rig = Rig(Broker({TP0: 100}), store)
        await rig.write_all(max_rows=100)
        assert rig.store.stored() == [o for o in range(100) if o != 42]
        assert [letter["offset"] for letter in rig.dlq.sent] == [42]
        assert "Code: 53. Column team_id: argument out of range" in rig.dlq.sent[0]["reason"]

    run(main())


def test_a_retry_after_a_crash_mid_bisection_recuts_the_same_pieces() -> None:
    # Deterministic pieces: a sink killed while bisecting, and the next owner, insert the same pieces
    # under the same tokens, so ClickHouse keeps every good row exactly once.
    async def main() -> None:
        broker = Broker({TP0: 1000})
        first = Rig(broker, FakeStore({123, 700}))
        crash_after = 9

        def crash() -> None:
            if len(first.store.calls) > crash_after:
                raise KeyboardInterrupt  # stands for SIGKILL: nothing after this runs

        first.store.gate = crash
        with pytest.raises(KeyboardInterrupt):
            await first.write_all(max_rows=1000)
        assert broker.committed[TP0] == OffsetAndMetadata(0, "pending:999")

        second = Rig(broker, FakeStore({123, 700}))
        second.store.blocks = dict(first.store.blocks)  # the same ClickHouse
        await second.write_all(max_rows=1000)
        assert second.store.calls[:crash_after] == first.store.calls[:crash_after]
        assert second.store.stored() == [o for o in range(1000) if o not in (123, 700)]  # each once
        assert broker.committed[TP0] == OffsetAndMetadata(1000, "")

    run(main())


# -- transient / permanent -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        errors.NetworkError("Code: 210. Connection refused (127.0.0.1:19000)"),
        errors.SocketTimeoutError("Code: 209. (127.0.0.1:19000)"),
        errors.ServerException("DB::Exception: Memory limit exceeded", code=241),
        errors.ServerException("DB::Exception: Too many parts", code=252),
        errors.ServerException("DB::Exception: Too many simultaneous queries", code=202),
    ],
)
def test_a_transient_error_retries_the_same_batch_with_backoff(exc: Exception) -> None:
    async def main() -> None:
        rig = Rig(Broker({TP0: 100}), FakeStore())
        rig.store.down = exc
        await rig.fetch()
        rig.writer.submit(next_batch(rig.partitions, TABLES, 0.0, 100, 0.0, True))  # type: ignore[arg-type]
        waits = []
        for _ in range(4):
            await rig.writer.poll()
            assert rig.writer.backing_off() and not rig.writer.idle
            waits.append(rig.writer.retry_at - rig.clock)
            rig.clock = rig.writer.retry_at
        assert waits[0] < waits[-1] and all(0.5 <= w <= 12 for w in waits)  # exponential, jittered, capped
        assert set(rig.store.calls) == {f"{TOPIC}:0:0-99"}  # the same batch, never bisected
        rig.store.down = None
        await rig.writer.poll()
        assert rig.writer.idle and rig.store.stored() == list(range(100)) and not rig.dlq.sent

    run(main())


@pytest.mark.parametrize("code", [164, 497, 516, 60])
def test_a_fatal_error_stops_without_committing_past_the_batch(code: int) -> None:
    async def main() -> None:
        rig = Rig(Broker({TP0: 100}), FakeStore())
        rig.store.down = errors.ServerException("DB::Exception: not allowed", code=code)
        with pytest.raises(SinkFailed):
            await rig.write_all(max_rows=100)
        assert rig.broker.commit_log == [(TP0, 0, "pending:99")]  # re-cut identically after the restart
        assert not rig.dlq.sent and rig.store.calls == [f"{TOPIC}:0:0-99"]  # no bisection, no DLQ

    run(main())


# -- dead letters ----------------------------------------------------------------------------------


def test_an_oversize_dead_letter_is_truncated_and_loses_nothing_else() -> None:
    # Defect: a dead letter above the broker's limit raised a KafkaError that dropped the whole buffer.
    async def main() -> None:
        broker = Broker({TP0: 30})
        broker.logs[TP0][5] = ujson.dumps({"p": "x" * 1_500_000}).encode()
        rig = Rig(broker, FakeStore({5, 6}))
        rig.dlq.max_bytes = 200_000  # a broker stricter than our default limit: letters shrink to fit
        await rig.write_all(max_rows=20)
        assert rig.store.stored() == [o for o in range(30) if o not in (5, 6)]
        big, small = sorted(rig.dlq.sent, key=lambda letter: letter["offset"])
        assert (big["offset"], big["truncated"], big["raw_bytes"]) == (5, True, len(broker.logs[TP0][5]))
        assert big["raw"].startswith('{"p":"xxx') and "Cannot parse input" in big["reason"]
        assert small["offset"] == 6 and "truncated" not in small
        assert broker.committed[TP0].offset == 30

    run(main())


def test_a_kafka_error_sending_dead_letters_is_retried_and_keeps_the_buffer() -> None:
    async def main() -> None:
        rig = Rig(Broker({TP0: 30}), FakeStore({3}))
        rig.dlq.errors = [KafkaTimeoutError()]
        await rig.write_all(max_rows=10)
        assert rig.store.stored() == [o for o in range(30) if o != 3]
        assert [letter["offset"] for letter in rig.dlq.sent] == [3]
        assert rig.broker.committed[TP0].offset == 30

    run(main())


# -- commits and pending ranges --------------------------------------------------------------------


def test_a_revoke_waits_for_an_inflight_commit_and_no_commit_follows_it() -> None:
    # Defect: the revoke listener raced the main flush, so the committed offset could move backwards.
    async def main() -> None:
        broker = Broker({TP0: 200})
        rig = Rig(broker, FakeStore())
        listener = _Rebalance.__new__(_Rebalance)
        gate, inflight = asyncio.Event(), asyncio.Event()

        async def slow_final_commit(tp: TopicPartition, om: OffsetAndMetadata) -> None:
            if om.offset == 100 and not om.metadata:
                inflight.set()
                await gate.wait()

        rig.consumer.commit_gate = slow_final_commit
        await rig.fetch()
        rig.writer.submit(next_batch(rig.partitions, TABLES, 0.0, 100, 0.0))  # type: ignore[arg-type]
        writing = asyncio.create_task(rig.writer.poll())
        await inflight.wait()
        revoking = asyncio.create_task(rig.committer.revoke([TP0]))
        await asyncio.sleep(0.01)
        assert not revoking.done()  # the listener waits for the commit in flight
        gate.set()
        await asyncio.gather(writing, revoking)
        assert rig.partitions.epoch(TP0) is None
        del listener
        rig.assign({TP0})  # ours again: from the committed offset
        await rig.write_all(max_rows=100)
        offsets = broker.offsets_of(TP0)
        assert offsets == sorted(offsets) and offsets[-1] == 200
        assert rig.store.stored() == list(range(200))

    run(main())


def test_a_batch_whose_partition_was_revoked_mid_insert_never_commits() -> None:
    async def main() -> None:
        broker = Broker({TP0: 100})
        rig = Rig(broker, FakeStore())
        started, release = asyncio.Event(), asyncio.Event()

        async def slow_insert(table: str, rows: list[KafkaRow], token: str) -> None:
            started.set()
            await release.wait()
            rig.store.insert(table, rows, token)

        rig.writer.insert = slow_insert
        await rig.fetch()
        rig.writer.submit(next_batch(rig.partitions, TABLES, 0.0, 100, 0.0))  # type: ignore[arg-type]
        writing = asyncio.create_task(rig.writer.poll())
        await started.wait()
        await rig.committer.revoke([TP0])  # nothing in flight to wait for: the insert is not a commit
        rig.assign({TP0})  # re-assigned (another epoch): the pending range pins the re-cut
        assert rig.partitions.states[TP0].pin == 99
        release.set()
        await writing
        assert broker.commit_log == [(TP0, 0, "pending:99")]  # the old epoch's job gave up
        rig.writer.insert = rig._insert
        await rig.write_all(max_rows=10)  # a smaller batch size now: the pin still cuts 0-99
        assert rig.store.calls == [f"{TOPIC}:0:0-99"] * 2  # once late from the old epoch, once re-cut
        assert rig.store.stored() == list(range(100))  # ClickHouse kept one (same token)
        assert broker.offsets_of(TP0) == [0, 0, 100]

    run(main())


def test_a_commit_refused_by_a_rebalance_rewinds_and_recuts_the_same_batch() -> None:
    async def main() -> None:
        broker = Broker({TP0: 300})
        rig = Rig(broker, FakeStore())
        rig.consumer.fetch_size = 300
        await rig.fetch()
        rig.consumer.commit_errors = [None, CommitFailedError("rebalanced")]  # type: ignore[list-item]

        async def fail_second(tp: TopicPartition, om: OffsetAndMetadata) -> None:
            if rig.consumer.commit_errors and rig.consumer.commit_errors[0] is None:
                rig.consumer.commit_errors.pop(0)

        rig.consumer.commit_gate = fail_second
        rig.writer.submit(next_batch(rig.partitions, TABLES, 0.0, 100, 0.0, True))  # type: ignore[arg-type]
        await rig.writer.poll()
        assert rig.writer.idle and rig.consumer.position[TP0] == 0  # sought back, buffer dropped
        assert rig.partitions.states[TP0].buffer.rows == [] and rig.partitions.states[TP0].pin == 99
        rig.consumer.commit_gate = None
        await rig.write_all(max_rows=100)
        assert rig.store.stored() == list(range(300))
        assert broker.offsets_of(TP0) == sorted(broker.offsets_of(TP0))

    run(main())


def test_commits_never_move_backwards() -> None:
    async def main() -> None:
        broker = Broker({TP0: 10})
        broker.committed[TP0] = OffsetAndMetadata(50, "")
        rig = Rig(broker, FakeStore())
        with pytest.raises(SinkFailed, match="back from 50 to 10"):
            await rig.committer.commit(TP0, 10, "", rig.partitions.epoch(TP0))  # type: ignore[arg-type]
        assert broker.commit_log == []

    run(main())


def test_cut_takes_a_pinned_range_whole_or_not_at_all() -> None:
    # Defect: a forced flush (revoke, shutdown) cut a part of the pinned range under another token.
    buf = PartitionBuffer(TOPIC, 0)
    for o in range(100, 150):
        buf.add(KafkaRow(value(o), 0, o, 0), 0.0)
    assert cut(buf, 199, 1e9, 10, 0.0, force=True) == 0
    assert cut(buf, 199, 1e9, 10, 0.0, force=False) == 0
    for o in range(150, 260):
        buf.add(KafkaRow(value(o), 0, o, 0), 0.0)
    assert cut(buf, 199, 0.0, 10, 60.0, force=False) == 100  # the whole range, whatever the batch size
    assert cut(buf, None, 0.0, 500, 60.0, force=True) == 160
    assert cut(buf, None, 0.0, 500, 60.0, force=False) == 0
    assert not buf.add(KafkaRow(value(200), 0, 200, 0), 0.0)  # a re-fetched offset is not held twice


# -- the loop (Sink.pump) with fakes ---------------------------------------------------------------


class Harness:
    def __init__(
        self, tmp: Path, broker: Broker, store: FakeStore, batch_rows: int = 100, batch_seconds: float = 0.0
    ) -> None:
        settings = Settings(home=tmp, topic_prefix="p_", sink_batch_rows=batch_rows, sink_batch_seconds=batch_seconds)
        self.sink = Sink(settings)
        self.sink.table_of = TABLES
        self.broker, self.store = broker, store
        self.consumer = FakeConsumer(broker, fetch_size=150)
        self.sink.consumer = self.consumer  # type: ignore[assignment]
        self.sink.store = store  # type: ignore[assignment]
        self.sink.dlq = FakeProducer()  # type: ignore[assignment]
        self.sink.offsets = FakeAdmin(broker)  # type: ignore[assignment]
        self.sink.wire()
        self.sink.writer.backoff = Backoff(first=0.01, cap=0.05)
        self.listener = _Rebalance(self.sink)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, tps: set[TopicPartition]) -> None:
        await self.consumer.rebalance(self.listener, tps)
        self.task = asyncio.create_task(self.sink.pump(self.stop))

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task
        self.sink.executor.shutdown(wait=True)


def test_records_fetched_during_an_outage_are_kept(tmp_path: Path) -> None:
    # Defect: while waiting out ClickHouse the loop polled Kafka and dropped what the poll returned,
    # then committed past it. Now every returned record is buffered, and the rows all arrive once.
    async def main() -> None:
        h = Harness(tmp_path, Broker({TP0: 600}), FakeStore())
        h.store.down = errors.NetworkError("Code: 210. Connection refused")
        await h.start({TP0})
        await until(lambda: h.sink.writer.backing_off(), what="backing off")
        await until(lambda: h.consumer.paused() == {TP0}, what="fetching stopped")
        h.consumer.fetch_while_paused = 2  # polls that still return records (fetched before the pause)
        await until(lambda: h.consumer.fetch_while_paused == 0, what="records returned while paused")
        assert h.sink.partitions.buffered() >= 300  # kept, though paused; memory stays bounded by the pause
        h.store.down = None
        await until(lambda: h.store.stored() == list(range(600)), what="every row inserted")
        await until(lambda: h.broker.committed[TP0].offset == 600, what="committed")
        assert h.consumer.paused() == set()
        await h.finish()

    run(main())


def test_a_rebalance_mid_outage_pauses_the_new_assignment(tmp_path: Path) -> None:
    # Defect: after a rebalance the new assignment was not paused: records were fetched and dropped.
    async def main() -> None:
        broker = Broker({TP0: 300, TP1: 300})
        h = Harness(tmp_path, broker, FakeStore())
        h.store.down = errors.ServerException("DB::Exception: Too many parts", code=252)
        await h.start({TP0})
        await until(lambda: h.consumer.paused() == {TP0}, what="paused during the outage")
        pauses: list[set[TopicPartition]] = []
        original = h.sink.pending.load

        async def load_and_look() -> None:
            pauses.append(h.consumer.paused())  # what the fetcher sees while the listener awaits
            await original()

        h.sink.pending.load = load_and_look  # type: ignore[method-assign]
        await h.consumer.rebalance(h.listener, {TP0, TP1})
        assert pauses[0] == {TP0, TP1}  # paused by the listener itself, before its first await
        h.store.down = None
        await until(lambda: h.store.stored(0) == list(range(300)) and h.store.stored(1) == list(range(300)))
        offsets = [broker.offsets_of(tp) for tp in (TP0, TP1)]
        assert all(o == sorted(o) for o in offsets)
        await h.finish()

    run(main())


def test_a_pinned_range_is_recut_identically_after_a_forced_flush(tmp_path: Path) -> None:
    async def main() -> None:
        broker = Broker({TP0: 150})
        broker.committed[TP0] = OffsetAndMetadata(100, "pending:199")  # a previous owner died inserting
        h = Harness(tmp_path, broker, FakeStore())
        await h.start({TP0})
        await until(lambda: h.sink.partitions.buffered() == 50, what="rows 100-149 buffered")
        await h.finish()  # a forced flush (shutdown): the incomplete pinned range is not touched
        assert h.store.calls == [] and broker.committed[TP0] == OffsetAndMetadata(100, "pending:199")

        broker.append(TP0, 150)
        h2 = Harness(tmp_path, broker, FakeStore())
        await h2.start({TP0})
        await until(lambda: broker.committed[TP0].offset == 300, what="all committed")
        assert h2.store.calls[0] == f"{TOPIC}:0:100-199"
        assert h2.store.stored() == list(range(100, 300))
        await h2.finish()

    run(main())


def test_shutdown_flushes_what_is_buffered(tmp_path: Path) -> None:
    async def main() -> None:
        # Never due by rows or age: only the drain writes it.
        h = Harness(tmp_path, Broker({TP0: 42}), FakeStore(), batch_rows=1000, batch_seconds=3600.0)
        await h.start({TP0})
        await until(lambda: h.sink.partitions.buffered() == 42)
        await h.finish()
        assert h.store.stored() == list(range(42)) and h.broker.committed[TP0].offset == 42

    run(main())
