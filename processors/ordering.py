"""Each partition's messages reach the protocol in offset order, or not at all.

faust-streaming can drop a range of fetched offsets around a rebalance and go on with the offsets after
it (tests/test_it_identity_properties.py caught it: a distinct id's later ``$identify`` decided by its
lane before its earlier one). The transport never commits past the hole and eventually re-reads it
(processors/transport.py), but by then the later messages were processed: an id's events out of order
break docs/identity.md's invariant 2. So the agent admits a message only if it is the next offset of
its partition; a message past a hole is left untaken (its ack ignored, its offset uncommitted) and the
partition is sought back to the hole at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum


class Admit(Enum):
    TAKE = "take"  # the next offset: process it
    SEEN = "seen"  # below the next offset: processed before (a re-read after a seek); skip it
    GAP = "gap"  # past the next offset: a hole before it; leave it and seek back


QUIET_S = 1.0  # no message past the hole for this long: the stale fetches are drained, seeking is safe
SEEK_AGAIN_AFTER_S = 3.0


class InOrder:
    def __init__(self) -> None:
        self.next: dict[Hashable, int] = {}
        # tp -> [offset the partition waits for, when a message past it last arrived, when last sought]
        self.holes: dict[Hashable, list[float]] = {}

    def reset(self) -> None:
        """After a rebalance: where a partition resumes is its committed offset again."""
        self.next.clear()
        self.holes.clear()

    def admit(self, tp: Hashable, offset: int, committed: int | None, now: float = 0.0) -> Admit:
        """``committed``: the partition's committed offset (the next to read), for a partition this
        worker has not taken a message of since it was assigned; None if unknown."""
        expected = self.next.get(tp, committed)
        if expected is None or offset == expected:
            self.next[tp] = offset + 1
            self.holes.pop(tp, None)
            return Admit.TAKE
        if offset < expected:
            return Admit.SEEN
        hole = self.holes.setdefault(tp, [expected, now, -1e9])
        hole[0], hole[1] = expected, now
        return Admit.GAP

    def resume_at(self, tp: Hashable, committed: int | None) -> int | None:
        return self.next.get(tp, committed)

    def due_seeks(self, now: float) -> list[tuple[Hashable, int]]:
        """Partitions to seek back to their hole now. Not while messages past the hole still arrive: a
        seek while fetched messages are in flight makes Faust drop the re-read ones (its read-offset
        filter moves past them), so wait until that partition has been quiet; then again every few
        seconds until the hole is read."""
        due = []
        for tp, hole in self.holes.items():
            if now - hole[1] >= QUIET_S and now - hole[2] >= SEEK_AGAIN_AFTER_S:
                hole[2] = now
                due.append((tp, int(hole[0])))
        return due
