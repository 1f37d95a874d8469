"""Live traffic first: how the processors' one agent fits a historical backlog around live events.

``events_historical`` (``historical_migration`` batches, ``eventpipe import``) is co-partitioned with
``events_raw`` and ``identity_inbox`` and read by the same agent, so an imported event goes through the
same identity state, in its partition's order, as a live one. What differs is when it is processed:

* the agent takes historical events off the stream at once (a stream buffer full of them would keep live
  events queued behind it) and keeps them in a :class:`Backlog`, each message held (its offset stays
  uncommitted until it is processed);
* live events are processed as they come; the backlog is processed in slices of :data:`SLICE` events
  by a drain task, only while no live partition has messages it has not taken
  (:func:`live_behind`), and under the same lock as live batches, so a live batch waits for at most
  one slice;
* the backlog is bounded: at :data:`HIGH` events the worker pauses fetching the historical partitions
  (Faust's ``pause_partitions``) and resumes them once the backlog is down to :data:`LOW`.

While a rebalance or a shutdown stops the flow, the backlog is drained whatever live traffic waits:
Faust waits for every taken message to be acked before it gives partitions up.

Everything here is pure (no Faust, no Kafka) and tested in tests/test_unit_priority.py; the wiring is in
processors/app.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from enum import Enum
from typing import Generic, TypeVar

SLICE = 200  # historical events per slice: a live batch waits for at most this many (~10-40 ms)
HIGH = 4000  # backlog size at which the historical partitions are paused ...
LOW = 1000  # ... and resumed again

E = TypeVar("E")


class Flow(Enum):
    PAUSE = "pause"
    RESUME = "resume"


class Backlog(Generic[E]):
    """Historical events taken from the stream, in the order taken (per partition: offset order)."""

    def __init__(self, high: int = HIGH, low: int = LOW, slice_size: int = SLICE) -> None:
        if not 0 <= low < high:
            raise ValueError("need 0 <= low < high")
        self.high, self.low, self.slice_size = high, low, slice_size
        self.events: deque[E] = deque()
        self.paused = False  # whether the historical partitions are paused because of this backlog

    def __len__(self) -> int:
        return len(self.events)

    def add(self, events: Iterable[E]) -> None:
        self.events.extend(events)

    def take(self) -> list[E]:
        """The next slice (oldest first)."""
        n = min(self.slice_size, len(self.events))
        return [self.events.popleft() for _ in range(n)]

    def flow(self) -> Flow | None:
        """Pause or resume the historical partitions now (None: leave them as they are)."""
        if not self.paused and len(self.events) >= self.high:
            self.paused = True
            return Flow.PAUSE
        if self.paused and len(self.events) <= self.low:
            self.paused = False
            return Flow.RESUME
        return None

    def reassigned(self) -> None:
        """After a rebalance: the partitions may be paused or not; the next :meth:`flow` decides again."""
        self.paused = len(self.events) < self.high


def may_drain(backlog_size: int, live_waiting: bool, flow_stopped: bool) -> bool:
    """Whether the drain task processes a slice now: live events first, except while Faust waits for
    every taken message (a rebalance or shutdown), which the backlog would otherwise hold up forever."""
    return backlog_size > 0 and (flow_stopped or not live_waiting)


def live_behind(
    partitions: Iterable[Hashable],
    highwater: Callable[[Hashable], int | None],
    next_offset: Callable[[Hashable], int | None],
) -> bool:
    """Whether any live partition has messages the agent has not taken yet: its high watermark (as the
    last fetch saw it) is past the next offset the agent takes (unknown offsets count as nothing waiting)."""
    for tp in partitions:
        end, nxt = highwater(tp), next_offset(tp)
        if end is not None and nxt is not None and end > nxt:
            return True
    return False
