"""Each partition's messages reach the protocol in offset order, or not at all.

faust-streaming can drop a range of fetched offsets around a rebalance and go on with the offsets after
it (tests/test_it_identity_properties.py caught it: a distinct id's later ``$identify`` decided by its
lane before its earlier one). The transport never commits past the hole and eventually re-reads it
(processors/transport.py), but by then the later messages were processed: an id's events out of order
break docs/identity.md's invariant 2. So the agent admits a message only if it is the next offset of
its partition; a message past a hole is left untaken (its ack ignored, its offset uncommitted) and the
partition is sought back to the hole at once.

Where a partition starts after its assignment must be known before its first message is admitted
(:meth:`InOrder.begin`): the committed offset as the broker has it, or the log start for a partition that
never committed. Faust's own record of committed offsets is empty until it seeks to them, and its fetcher
delivers before that: a restarted worker took the first message it was handed as the start (offset 500)
while 89..499 had been fetched and dropped, and committed past them (chaos (b), 411 of 20,000 events
never stored, about 1 run in 12).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
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
        """After a rebalance: where a partition resumes is to be learned again (:meth:`begin`)."""
        self.next.clear()
        self.holes.clear()

    def unknown(self, partitions: Iterable[Hashable]) -> set[Hashable]:
        """The partitions whose start :meth:`begin` has not been told since the last reset."""
        return {tp for tp in partitions if tp not in self.next}

    def begin(self, tp: Hashable, start: int) -> None:
        """``start``: the first offset to take on ``tp`` since its assignment (where it resumes)."""
        self.next.setdefault(tp, start)

    def admit(self, tp: Hashable, offset: int, now: float = 0.0) -> Admit:
        expected = self.next.get(tp)
        if expected is None:
            raise KeyError(f"{tp}: where it starts is not known (begin() it first)")
        if offset == expected:
            self.next[tp] = offset + 1
            self.holes.pop(tp, None)
            return Admit.TAKE
        if offset < expected:
            return Admit.SEEN
        hole = self.holes.setdefault(tp, [expected, now, -1e9])
        hole[0], hole[1] = expected, now
        return Admit.GAP

    def resume_at(self, tp: Hashable) -> int | None:
        """The next offset to take on ``tp``; None before :meth:`begin`."""
        return self.next.get(tp)

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


def start_offsets(
    committed: Mapping[Hashable, int | None], log_start: Mapping[Hashable, int]
) -> dict[Hashable, int]:
    """Where each partition resumes after an assignment: its committed offset (None: the group never
    committed it), but never below its log start, which is where the consumer reads from when the
    committed offset is missing or was deleted by retention (``auto_offset_reset`` earliest). Below it,
    the first message would be a hole forever: the seek back lands on deleted records."""
    return {tp: max(c if c is not None else 0, log_start.get(tp, 0)) for tp, c in committed.items()}
