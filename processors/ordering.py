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


SEEK_AGAIN_AFTER_S = 2.0


class InOrder:
    def __init__(self) -> None:
        self.next: dict[Hashable, int] = {}
        self.sought: dict[Hashable, tuple[int, float]] = {}

    def reset(self) -> None:
        """After a rebalance: where a partition resumes is its committed offset again."""
        self.next.clear()
        self.sought.clear()

    def should_seek(self, tp: Hashable, offset: int, now: float) -> bool:
        """Seek a partition back to ``offset`` once, not at every later message that was already fetched
        (each seek restarts the fetch; a second one only if the first did not bring the hole)."""
        last = self.sought.get(tp)
        if last is not None and last[0] == offset and now - last[1] < SEEK_AGAIN_AFTER_S:
            return False
        self.sought[tp] = (offset, now)
        return True

    def admit(self, tp: Hashable, offset: int, committed: int | None) -> Admit:
        """``committed``: the partition's committed offset (the next to read), for a partition this
        worker has not taken a message of since it was assigned; None if unknown."""
        expected = self.next.get(tp, committed)
        if expected is None or offset == expected:
            self.next[tp] = offset + 1
            return Admit.TAKE
        return Admit.SEEN if offset < expected else Admit.GAP

    def resume_at(self, tp: Hashable, committed: int | None) -> int | None:
        return self.next.get(tp, committed)
