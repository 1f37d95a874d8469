"""A watchdog for the processors' consumer: a partition with unread messages that makes no progress.

faust-streaming 0.15 can leave a worker assigned to partitions it never reads again after a rebalance
(seen in tests/test_it_identity.py's kill test, about 1 run in 10: both workers "ready", the fetch
loop waiting for records, messages unread), and it drops records it fetched while its flow was
suspended (its fetch loop waits for the stream or for ``suspend_flow``, whichever comes first, then
moves its read offset past the record either way). Nothing in Faust notices either. This watchdog does,
from public facts only: per partition, the next offset the agents must take (the one after the last
taken, or the committed offset of a partition that took nothing since its assignment), the consumer's
fetch position and the broker's high watermark.

A partition is *stalled* when it has messages from that next offset on, has taken nothing and its fetch
position has not moved for ``stall_after_s`` while the worker took nothing at all, outside a rebalance;
or for ``starved_after_s`` while the worker was busy with other partitions. A moving position is a
partition being read whose messages wait behind others in the stream (a worker catching up on a backlog
of events_raw took no identity_inbox message for 20 s although Faust fetched them: restarting it would
only start the backlog over). A busy worker serves its partitions in turns: aiokafka hands over one
partition's fetched records (up to a fetch of 4 MB, ~15,000 small events) before the next one's, so
under a backlog a partition's position can stand still for as long as the other partitions' turns take
(45 s for 3 others at 1,000 events/s in bench/restart.py, which crashed the worker when 20 s was the
only limit). A stalled partition is first resumed (as Faust does after a rebalance)
and, if its fetch position is past its next offset (the records in between were fetched and never
handed over), sought back to the next offset; if it stays stalled for as long again, the worker exits
non-zero and the supervisor restarts it, which rejoins the group and reads from the committed offsets:
nothing is lost, the events are just late.

A dropped tail with nothing fetched after it is the case the committed offset is for: the fetch position
is at the end, so counted from it the partition looks caught up for good. (First suspected of a chaos (b)
failure that turned out to be a partition's start taken from its first message, processors/ordering.py;
Faust does drop fetched records that way, and only a later message would reveal the hole.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

STALL_AFTER_S = 20.0
STARVED_AFTER_S = 180.0


@dataclass
class _Progress:
    offset: int | None = None  # last offset taken
    since: float = 0.0  # when it last moved (or the partition was assigned)
    resumed: bool = False
    position: int | None = None  # the consumer's fetch position at the last check


@dataclass
class Verdict:
    resume: list[Hashable] = field(default_factory=list)  # stalled: resume fetching them
    give_up: list[Hashable] = field(default_factory=list)  # still stalled after a resume: restart the worker
    # resumed partitions whose fetch position is past their next offset: seek them back to it
    seek: dict[Hashable, int] = field(default_factory=dict)


class Liveness:
    def __init__(self, stall_after_s: float = STALL_AFTER_S, starved_after_s: float = STARVED_AFTER_S) -> None:
        self.stall_after_s = stall_after_s
        self.starved_after_s = starved_after_s
        self.progress: dict[Hashable, _Progress] = {}
        self.last_taken = float("-inf")  # when the agents last took a message, of any partition

    def taken(self, tp: Hashable, offset: int, now: float) -> None:
        self.last_taken = max(self.last_taken, now)
        p = self.progress.get(tp)
        if p is None:
            self.progress[tp] = _Progress(offset, now)
        elif p.offset is None or offset > p.offset:
            p.offset, p.since, p.resumed = offset, now, False

    def check(
        self,
        now: float,
        assigned: Iterable[Hashable],
        highwater: Callable[[Hashable], int | None],
        position: Callable[[Hashable], int | None],
        rebalancing: bool,
        next_offset: Callable[[Hashable], int | None] | None = None,
    ) -> Verdict:
        """``highwater``: the broker's end offset as last fetched; ``position``: the consumer's next
        offset to fetch (where it starts after the seek to committed offsets); ``next_offset``: the offset
        the agents must take next on a partition they took nothing of yet (its committed offset, or its
        log start if it never committed; None if unknown: counted from the fetch position then)."""
        verdict = Verdict()
        assigned = set(assigned)
        for tp in list(self.progress):
            if tp not in assigned:
                del self.progress[tp]
        for tp in assigned:
            p = self.progress.setdefault(tp, _Progress(None, now))
            if rebalancing:
                p.since, p.resumed = now, False
                continue
            end, fetched = highwater(tp), position(tp)
            start = _next(p, tp, position, next_offset)
            behind = end is not None and start is not None and end > start
            reading = fetched is not None and p.position is not None and fetched > p.position
            p.position = fetched if fetched is not None else p.position
            if not behind or reading:
                p.since, p.resumed = now, False
                continue
            busy = now - self.last_taken < self.stall_after_s
            if now - p.since < (self.starved_after_s if busy else self.stall_after_s):
                continue
            if p.resumed:
                verdict.give_up.append(tp)
            else:
                verdict.resume.append(tp)
                if fetched is not None and start is not None and fetched > start:
                    verdict.seek[tp] = start
                p.since, p.resumed = now, True
        return verdict

    def lag(
        self,
        highwater: Callable[[Hashable], int | None],
        position: Callable[[Hashable], int | None],
        next_offset: Callable[[Hashable], int | None] | None = None,
    ) -> dict[Hashable, int]:
        """Messages behind the end of each partition :meth:`check` last saw assigned: the high watermark
        minus the next offset the agents must take (arguments as for :meth:`check`)."""
        lag: dict[Hashable, int] = {}
        for tp, p in self.progress.items():
            end, start = highwater(tp), _next(p, tp, position, next_offset)
            if end is not None and start is not None:
                lag[tp] = max(0, end - start)
        return lag


def _next(
    p: _Progress,
    tp: Hashable,
    position: Callable[[Hashable], int | None],
    next_offset: Callable[[Hashable], int | None] | None,
) -> int | None:
    """The next offset the agents must take on ``tp``: after the last one taken; before any, the one
    ``next_offset`` knows (the committed offset), else the fetch position."""
    if p.offset is not None:
        return p.offset + 1
    known = next_offset(tp) if next_offset is not None else None
    return known if known is not None else position(tp)
