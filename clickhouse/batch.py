"""Batching policy of the sink, free of I/O: what to flush, and the token that names a batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from clickhouse.store import KafkaRow


@dataclass
class PartitionBuffer:
    """Rows of one (topic, partition) waiting for an insert, in offset order."""

    topic: str
    partition: int
    rows: list[KafkaRow] = field(default_factory=list)
    opened_at: float = 0.0

    def add(self, row: KafkaRow, now: float) -> None:
        if not self.rows:
            self.opened_at = now
        self.rows.append(row)

    def due(self, now: float, max_rows: int, max_seconds: float) -> bool:
        return bool(self.rows) and (len(self.rows) >= max_rows or now - self.opened_at >= max_seconds)

    def take(self, max_rows: int) -> list[KafkaRow]:
        taken, self.rows = self.rows[:max_rows], self.rows[max_rows:]
        if self.rows:
            self.opened_at = time.monotonic()
        return taken


def dedup_token(topic: str, partition: int, rows: list[KafkaRow]) -> str:
    """Deterministic name of a batch: the same offset range re-sent after a crash is the same block."""
    return f"{topic}:{partition}:{rows[0].offset}-{rows[-1].offset}"
