"""Batching policy of the sink, free of I/O: what to flush, the token that names a batch, how a refused
batch is cut in two."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from clickhouse.store import KafkaRow


@dataclass
class PartitionBuffer:
    """Rows of one (topic, partition) waiting for an insert, in offset order."""

    topic: str
    partition: int
    rows: list[KafkaRow] = field(default_factory=list)
    opened_at: float = 0.0

    def add(self, row: KafkaRow, now: float) -> bool:
        """Append a row; False (and nothing kept) for an offset at or below the last one held, which
        only a re-fetch of rows already buffered can produce."""
        if self.rows and row.offset <= self.rows[-1].offset:
            return False
        if not self.rows:
            self.opened_at = now
        self.rows.append(row)
        return True

    def due(self, now: float, max_rows: int, max_seconds: float) -> bool:
        return bool(self.rows) and (len(self.rows) >= max_rows or now - self.opened_at >= max_seconds)

    def take(self, max_rows: int) -> list[KafkaRow]:
        taken, self.rows = self.rows[:max_rows], self.rows[max_rows:]
        if self.rows:
            self.opened_at = time.monotonic()
        return taken


def dedup_token(topic: str, partition: int, rows: list[KafkaRow]) -> str:
    """Deterministic name of a batch: the same offset range re-sent after a crash is the same block.

    The token names a *row set* (every row of the partition between two offsets), so a piece of a
    bisected batch is named the same way: whichever cut inserts those rows, ClickHouse keeps them once.
    Only characters the store's token check accepts (no ``/``)."""
    return f"{topic}:{partition}:{rows[0].offset}-{rows[-1].offset}"


@dataclass(frozen=True)
class Batch:
    """One insert's worth of rows of one partition, cut while the partition was ours in ``epoch``."""

    tp: TopicPartition
    table: str
    rows: list[KafkaRow]
    epoch: int

    @property
    def first(self) -> int:
        return self.rows[0].offset

    @property
    def last(self) -> int:
        return self.rows[-1].offset

    @property
    def token(self) -> str:
        return dedup_token(self.tp.topic, self.tp.partition, self.rows)


def cut(buf: PartitionBuffer, pin: int | None, now: float, max_rows: int, max_seconds: float, force: bool) -> int:
    """How many rows to take from the head of ``buf`` as the next batch (0: none yet).

    ``pin`` is the last offset of a batch a previous owner committed as pending: that exact range is
    the next batch, whole or not at all — never a part of it under another token, not even when forced
    (revoke, shutdown): the next owner re-cuts it."""
    if not buf.rows:
        return 0
    if pin is not None:
        if buf.rows[-1].offset < pin:
            return 0  # wait until the whole pending range is back
        return sum(1 for r in buf.rows if r.offset <= pin)  # may be 0 if the head is past the pin
    if force or buf.due(now, max_rows, max_seconds):
        return min(len(buf.rows), max_rows)
    return 0


def halves(rows: list[KafkaRow]) -> tuple[list[KafkaRow], list[KafkaRow]]:
    """Split a refused piece: by position, so the same piece always splits the same way."""
    mid = len(rows) // 2
    return rows[:mid], rows[mid:]
