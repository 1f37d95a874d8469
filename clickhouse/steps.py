"""The sink's steps, each a small object testable with a fake consumer and a fake store (the shape of
Sentry's Arroyo: buffer by partition -> cut -> write -> commit, with backpressure instead of blocking).

* :class:`Partitions` — what we own, per partition: an epoch (bumped by every assignment), the buffer,
  the pending range a previous owner committed, the highest offset committed. Every record a fetch
  returns is kept; records are only ever dropped together with the partition (revoke: the consumer's
  position resets to the committed offset) or after a seek back (:meth:`Writer` rewinds).
* :class:`PendingRanges` — reads the committed offset and ``pending:<last>`` metadata of newly assigned
  partitions; a partition cuts no batch before that is known.
* :func:`next_batch` — the cut, round robin over partitions (:func:`clickhouse.batch.cut` decides).
* :class:`Committer` — the only place offsets are committed: under one lock (the revoke listener takes
  it too, so no commit of ours is in flight once a partition is revoked), only for the epoch the batch
  was cut in, never below the last committed offset.
* :class:`Writer` — one batch at a time through pending-commit -> insert (bisecting refused pieces) ->
  dead letters -> commit; a transient failure leaves the batch where it is and sets ``retry_at``
  (the loop keeps polling Kafka meanwhile, with every partition paused).
* :class:`FlowControl` — which partitions to pause: all while the writer backs off or the sink drains,
  a partition whose buffer is full otherwise; applied after every step and on assignment, so it
  survives rebalances (a new assignment starts unpaused in aiokafka).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import OffsetAndMetadata

from clickhouse.batch import Batch, PartitionBuffer, cut, dedup_token, halves
from clickhouse.deadletter import LETTER_LIMIT, MIN_LETTER_LIMIT, build_letter
from clickhouse.failures import Kind, classify_kafka, classify_store, describe
from clickhouse.store import KafkaRow
from eventpipe.metrics import SinkMetrics

log = logging.getLogger("eventpipe.sink")

PENDING = "pending:"

Clock = Callable[[], float]
Insert = Callable[[str, list[KafkaRow], str], Awaitable[None]]  # table, rows, dedup token
SendLetters = Callable[[list[bytes]], Awaitable[None]]  # returns once Kafka acknowledged every letter
ReadCommitted = Callable[[list[TopicPartition]], Awaitable[Mapping[TopicPartition, OffsetAndMetadata]]]


class Consumer(Protocol):
    """The part of AIOKafkaConsumer the steps use (public API only)."""

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None: ...


class Record(Protocol):
    """A fetched Kafka record (aiokafka's ConsumerRecord)."""

    value: bytes | None
    timestamp: int
    offset: int
    partition: int


class SinkFailed(RuntimeError):
    """A FATAL failure: the sink stops without committing past the batch."""


class PartitionLost(Exception):
    """The batch's partition was revoked (or re-assigned: another epoch) since the batch was cut."""


# -- partitions ------------------------------------------------------------------------------------


@dataclass
class PartitionState:
    epoch: int
    buffer: PartitionBuffer
    ready: bool = False  # committed offset and pending range known
    pin: int | None = None  # last offset of a pending batch that must be re-cut exactly
    committed: int = -1  # highest offset committed (or found committed) in this epoch

    def waiting_for_pin(self) -> bool:
        return self.pin is not None and (not self.buffer.rows or self.buffer.rows[-1].offset < self.pin)


class Partitions:
    def __init__(self) -> None:
        self.states: dict[TopicPartition, PartitionState] = {}
        self._epochs = 0
        self._turn = 0  # round robin start

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            if tp in self.states and not self.states[tp].ready:
                continue  # registered by a fetch a moment ago: keep its rows
            self._epochs += 1
            self.states[tp] = PartitionState(self._epochs, PartitionBuffer(tp.topic, tp.partition))

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.states.pop(tp, None)

    def epoch(self, tp: TopicPartition) -> int | None:
        state = self.states.get(tp)
        return state.epoch if state else None

    def unready(self) -> list[TopicPartition]:
        return [tp for tp, s in self.states.items() if not s.ready]

    def load(self, tp: TopicPartition, committed: OffsetAndMetadata | None) -> None:
        """Record what is committed for ``tp``; a ``pending:<last>`` metadata pins the next batch."""
        state = self.states[tp]
        state.ready = True
        if committed is None or committed.offset < 0:
            return
        state.committed = committed.offset
        meta = committed.metadata or ""
        if meta.startswith(PENDING):
            last = int(meta[len(PENDING) :])
            if last >= committed.offset:
                state.pin = last
                log.info("%s:%d resumes a pending batch %d-%d", tp.topic, tp.partition, committed.offset, last)

    def add(self, fetched: Mapping[TopicPartition, list[Record]], now: float) -> int:
        """Buffer every record a fetch returned (tombstones aside); returns how many were kept."""
        kept = 0
        for tp, messages in fetched.items():
            state = self.states.get(tp)
            if state is None:
                # aiokafka returns records of assigned partitions only, and assignment registers them
                # before any await: should not happen. Kept, never dropped: the partition is treated
                # as newly assigned (its pending range is read before it cuts).
                log.warning("records for %s:%d before its assignment", tp.topic, tp.partition)
                self.assign([tp])
                state = self.states[tp]
            for m in messages:
                if m.value is None:
                    continue  # a tombstone: no row (the offset range still names the batch)
                if state.buffer.add(KafkaRow(m.value, m.timestamp, m.offset, m.partition), now):
                    kept += 1
        return kept

    def round_robin(self) -> list[TopicPartition]:
        tps = list(self.states)
        if not tps:
            return []
        self._turn = (self._turn + 1) % len(tps)
        return tps[self._turn :] + tps[: self._turn]

    def buffered(self) -> int:
        return sum(len(s.buffer.rows) for s in self.states.values())


def next_batch(
    partitions: Partitions,
    table_of: Mapping[str, str],
    now: float,
    max_rows: int,
    max_seconds: float,
    force: bool = False,
) -> Batch | None:
    """The next batch to write, or None; ``force`` (draining) cuts whatever is buffered, pins aside."""
    for tp in partitions.round_robin():
        state = partitions.states[tp]
        if not state.ready:
            continue
        rows = state.buffer.rows
        if state.pin is not None and rows and rows[0].offset > state.pin:
            state.pin = None  # the pending range held no row of ours (all tombstones): nothing to re-cut
        n = cut(state.buffer, state.pin, now, max_rows, max_seconds, force)
        if n:
            state.pin = None
            return Batch(tp, table_of[tp.topic], state.buffer.take(n), state.epoch)
    return None


class PendingRanges:
    """Reads committed offsets (with metadata) of partitions not ready yet; retried until it works."""

    def __init__(self, read: ReadCommitted, partitions: Partitions, clock: Clock = time.monotonic) -> None:
        self.read, self.partitions, self.clock = read, partitions, clock
        self._next_try = 0.0

    async def load(self) -> None:
        tps = self.partitions.unready()
        if not tps or self.clock() < self._next_try:
            return
        epochs = {tp: self.partitions.epoch(tp) for tp in tps}
        try:
            committed = await self.read(tps)
        except Exception as exc:
            if classify_kafka(exc) is Kind.FATAL:
                raise SinkFailed(f"cannot read committed offsets: {exc!r}") from exc
            log.warning("reading committed offsets of %d partitions failed (%r); retrying", len(tps), exc)
            self._next_try = self.clock() + 1.0
            return
        for tp in tps:
            if tp in self.partitions.states and self.partitions.epoch(tp) == epochs[tp]:
                self.partitions.load(tp, committed.get(tp))


# -- commits ---------------------------------------------------------------------------------------


class Committer:
    def __init__(self, consumer: Consumer, partitions: Partitions) -> None:
        self.consumer, self.partitions = consumer, partitions
        # Held by every commit and by the revoke listener: once a partition is revoked no commit of
        # ours for it is in flight, and none starts (its epoch is gone).
        self.lock = asyncio.Lock()

    async def commit(self, tp: TopicPartition, offset: int, metadata: str, epoch: int) -> None:
        async with self.lock:
            state = self.partitions.states.get(tp)
            if state is None or state.epoch != epoch:
                raise PartitionLost(tp)
            if offset < state.committed:
                # Only a bug gets here; committing would make the partition re-deliver rows (and a
                # pending range named by a lower offset would re-cut a different batch).
                raise SinkFailed(f"refusing to move {tp.topic}:{tp.partition} back from {state.committed} to {offset}")
            await self.consumer.commit({tp: OffsetAndMetadata(offset, metadata)})
            state.committed = offset

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        async with self.lock:
            self.partitions.revoke(tps)


# -- writing ---------------------------------------------------------------------------------------


class Stage(enum.Enum):
    PENDING = "commit pending range"
    WRITE = "insert"
    LETTERS = "dead letters"
    COMMIT = "commit"


@dataclass
class Job:
    batch: Batch
    stage: Stage = Stage.PENDING
    todo: list[list[KafkaRow]] = field(default_factory=list)  # pieces still to insert; the last is next
    refused: list[tuple[KafkaRow, str]] = field(default_factory=list)
    inserted: int = 0

    def __post_init__(self) -> None:
        self.todo = [self.batch.rows]


class Backoff:
    """Exponential backoff with ±50 % jitter (replicas that failed together don't retry in lockstep)."""

    def __init__(self, first: float = 0.2, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.first, self.cap, self.rng = first, cap, rng or random.Random()
        self.delay = first

    def next(self) -> float:
        wait = self.delay * self.rng.uniform(0.5, 1.5)
        self.delay = min(self.delay * 2, self.cap)
        return wait

    def reset(self) -> None:
        self.delay = self.first


class Writer:
    """Takes one batch at a time to completion (or abandons it when its partition is lost)."""

    def __init__(
        self,
        committer: Committer,
        insert: Insert,
        send_letters: SendLetters,
        metrics: SinkMetrics,
        now_ts: Callable[[], str],
        rewind: Callable[[TopicPartition, int], None],
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.committer, self.insert, self.send_letters = committer, insert, send_letters
        self.metrics, self.now_ts, self.rewind, self.clock = metrics, now_ts, rewind, clock
        self.backoff = backoff or Backoff()
        self.job: Job | None = None
        self.retry_at = 0.0
        self.letter_limit = LETTER_LIMIT

    @property
    def idle(self) -> bool:
        return self.job is None

    def backing_off(self) -> bool:
        return self.clock() < self.retry_at

    def submit(self, batch: Batch) -> None:
        assert self.job is None, "one batch at a time"
        self.job = Job(batch)

    async def poll(self) -> None:
        """Advance the current batch until it is done, waits for a retry, or is abandoned."""
        while self.job is not None and not self.backing_off():
            job = self.job
            try:
                await self._step(job)
            except PartitionLost:
                self._abandon(job)
            except SinkFailed:
                raise
            except Exception as exc:
                self._failed(job, exc)

    def _failed(self, job: Job, exc: Exception) -> None:
        b = job.batch
        kind = classify_store(exc) if job.stage is Stage.WRITE else classify_kafka(exc)
        if kind is Kind.LOST:
            self._abandon(job)
            return
        if kind is Kind.FATAL:
            raise SinkFailed(f"batch {b.token} ({job.stage.value}): {exc!r}") from exc
        # TRANSIENT (DATA never reaches here: _write handles it by bisecting)
        self.metrics.retries.inc(b.table)
        wait = self.backoff.next()
        self.retry_at = self.clock() + wait
        log.warning("batch %s (%s) failed: %r; retrying in %.1fs", b.token, job.stage.value, exc, wait)

    def _abandon(self, job: Job) -> None:
        """The partition is no longer ours: leave the batch to the next owner, which re-cuts it from the
        committed pending range. If it still is ours (a commit failed before the listener ran), read it
        again from the batch's first offset, pinned to the same range."""
        b = job.batch
        self.job = None
        state = self.committer.partitions.states.get(b.tp)
        if state is not None and state.epoch == b.epoch:
            state.buffer.rows.clear()
            state.pin = b.last
            self.rewind(b.tp, b.first)
        log.info("batch %s abandoned (%s): partition %s:%d reassigned", b.token, job.stage.value, *b.tp)

    async def _step(self, job: Job) -> None:
        b = job.batch
        if self.committer.partitions.epoch(b.tp) != b.epoch:
            raise PartitionLost(b.tp)
        if job.stage is Stage.PENDING:
            # Before the insert: whoever re-reads the partition after a crash cuts this very range.
            await self.committer.commit(b.tp, b.first, f"{PENDING}{b.last}", b.epoch)
            job.stage = Stage.WRITE
        elif job.stage is Stage.WRITE:
            await self._write(job)
            job.stage = Stage.LETTERS
        elif job.stage is Stage.LETTERS:
            await self._dead_letter(job)
            job.stage = Stage.COMMIT
        else:
            await self.committer.commit(b.tp, b.last + 1, "", b.epoch)
            self.job = None
            self.backoff.reset()
            self.metrics.rows.inc(b.table, job.inserted)
            self.metrics.batches.inc(b.table)
            log.debug("batch %s done: %d rows inserted, %d refused", b.token, job.inserted, len(job.refused))

    async def _write(self, job: Job) -> None:
        """Insert the pending pieces; a refused piece is cut in two (the same way on every retry), a
        single refused row is set aside for the dead-letter topic. A transient error propagates with
        the piece still on the stack, so the retry resumes exactly there."""
        b = job.batch
        while job.todo:
            if self.committer.partitions.epoch(b.tp) != b.epoch:
                raise PartitionLost(b.tp)
            piece = job.todo[-1]
            token = dedup_token(b.tp.topic, b.tp.partition, piece)
            started = time.perf_counter()
            try:
                await self.insert(b.table, piece, token)
            except Exception as exc:
                if classify_store(exc) is not Kind.DATA:
                    raise
                job.todo.pop()
                if len(piece) == 1:
                    job.refused.append((piece[0], describe(exc)))
                else:
                    left, right = halves(piece)
                    job.todo += [right, left]  # left first: offset order
                    log.warning("piece %s refused (%s); bisecting", token, describe(exc))
                continue
            self.metrics.insert_latency.observe(time.perf_counter() - started)
            job.todo.pop()
            job.inserted += len(piece)

    async def _dead_letter(self, job: Job) -> None:
        if not job.refused:
            return
        b = job.batch
        while True:
            ts = self.now_ts()
            letters = [build_letter(b.table, b.tp.topic, r, e, ts, self.letter_limit) for r, e in job.refused]
            try:
                await self.send_letters(letters)  # acked before the offsets move past these rows
                break
            except MessageSizeTooLargeError:
                # The broker's limit is below ours: shrink (and keep the smaller limit) rather than
                # hold back the batch; a letter keeps its coordinates and error however small.
                if self.letter_limit <= MIN_LETTER_LIMIT:
                    raise
                self.letter_limit = max(MIN_LETTER_LIMIT, self.letter_limit // 8)
                log.warning("dead letters too large for the broker; limiting them to %d bytes", self.letter_limit)
        self.metrics.dead_letters.inc(b.table, len(job.refused))
        log.warning("%d rows of batch %s refused by ClickHouse, dead-lettered", len(job.refused), b.token)


# -- flow control ----------------------------------------------------------------------------------


class FlowControl:
    def __init__(self, consumer: Consumer, partitions: Partitions, max_buffered: int) -> None:
        self.consumer, self.partitions, self.max_buffered = consumer, partitions, max_buffered

    def wanted(self, hold_all: bool) -> set[TopicPartition]:
        """Partitions to pause: all while holding (backoff, draining); else those whose buffer is full,
        unless the buffer still waits for the rest of a pending range (that range must come in)."""
        assigned = self.consumer.assignment()
        if hold_all:
            return set(assigned)
        out = set()
        for tp in assigned:
            state = self.partitions.states.get(tp)
            if state is not None and len(state.buffer.rows) >= self.max_buffered and not state.waiting_for_pin():
                out.add(tp)
        return out

    def apply(self, hold_all: bool) -> None:
        want = self.wanted(hold_all)
        paused = self.consumer.paused()
        if want - paused:
            self.consumer.pause(*sorted(want - paused))
        if paused - want:
            self.consumer.resume(*sorted(paused - want))
