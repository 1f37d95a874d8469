"""Live traffic first: when the processors take a slice of historical events (docs/history.md).

``events_historical`` (``historical_migration`` batches, ``eventpipe import``) has the partition count of
``events_raw`` and ``identity_inbox``, and Faust's assignor gives partition N of every topic with the same
count to one worker: a historical event of an id meets the same identity state, on the same worker, as
the id's live events. The processors read it with an agent of its own, so its messages wait in their own
stream buffer, never in front of live ones:

* the live agent (``events_raw`` + ``identity_inbox``) processes its batches as they come;
* the history agent takes slices of at most :data:`SLICE` events and processes one only while no live
  partition has messages the live agent has not taken (:func:`live_behind`), both under one lock, so a
  live batch waits for at most one slice;
* while the history agent waits, its stream buffer fills and Faust stops fetching the historical
  partitions itself (its buffer-full flow control), so a backlog of any size costs a bounded buffer;
* it never waits longer than :data:`MAX_WAIT_S` for one slice (live traffic that never pauses still lets
  history advance, and nothing can wait on itself: a full historical buffer holds up Faust's delivery to
  the live agent too), nor while a rebalance or shutdown stopped the flow (Faust waits for every message
  taken before it gives partitions up).

Pure: tested in tests/test_unit_priority.py; the wiring is in processors/app.py.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

SLICE = 200  # historical events per slice: what a live batch may have to wait for (~10-40 ms)
POLL_S = 0.005  # how often a waiting slice looks again
MAX_WAIT_S = 0.5


def defer(live_waiting: bool, flow_stopped: bool, waited_s: float, max_wait_s: float = MAX_WAIT_S) -> bool:
    """Whether a taken slice of historical events waits a little longer for live traffic."""
    return live_waiting and not flow_stopped and waited_s < max_wait_s


def live_behind(
    partitions: Iterable[Hashable],
    highwater: Callable[[Hashable], int | None],
    next_offset: Callable[[Hashable], int | None],
) -> bool:
    """Whether any live partition has messages the live agent has not taken: its high watermark (as the
    last fetch saw it) is past the next offset the agent takes (unknown offsets count as nothing waiting)."""
    for tp in partitions:
        end, nxt = highwater(tp), next_offset(tp)
        if end is not None and nxt is not None and end > nxt:
            return True
    return False
