"""A watchdog for the processors' consumer: a partition with unread messages that makes no progress.

faust-streaming 0.15 can leave a worker assigned to partitions it never reads again after a rebalance
(seen in tests/test_it_identity.py's kill test, about 1 run in 10: both workers "ready", the fetch
loop waiting for records, messages unread). Nothing in Faust notices. This watchdog does, from public
facts only: per partition, the last offset an agent took, the consumer's fetch position and the broker's
high watermark. A partition is *stalled* when it has messages past the last one taken, has taken nothing
and its fetch position has not moved for ``stall_after_s``, outside a rebalance. A moving position is a
partition being read whose messages wait behind others in the stream (a worker catching up on a backlog
of events_raw took no identity_inbox message for 20 s although Faust fetched them: restarting it would
only start the backlog over). The worker first resumes it (as Faust does after a rebalance); if it stays
stalled for as long again, the worker exits non-zero and the supervisor restarts it, which rejoins the
group and reads from the committed offsets: nothing is lost, the events are just late.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

STALL_AFTER_S = 20.0


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


class Liveness:
    def __init__(self, stall_after_s: float = STALL_AFTER_S) -> None:
        self.stall_after_s = stall_after_s
        self.progress: dict[Hashable, _Progress] = {}

    def taken(self, tp: Hashable, offset: int, now: float) -> None:
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
    ) -> Verdict:
        """``highwater``: the broker's end offset as last fetched; ``position``: the consumer's next
        offset to fetch (where it starts after the seek to committed offsets)."""
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
            start = p.offset + 1 if p.offset is not None else fetched
            behind = end is not None and start is not None and end > start
            reading = fetched is not None and p.position is not None and fetched > p.position
            p.position = fetched if fetched is not None else p.position
            if not behind or reading:
                p.since, p.resumed = now, False
                continue
            if now - p.since < self.stall_after_s:
                continue
            if p.resumed:
                verdict.give_up.append(tp)
            else:
                verdict.resume.append(tp)
                p.since, p.resumed = now, True
        return verdict

    def lag(
        self, highwater: Callable[[Hashable], int | None], position: Callable[[Hashable], int | None]
    ) -> dict[Hashable, int]:
        """Messages behind the end of each partition :meth:`check` last saw assigned: the high watermark
        minus the offset after the last one taken (the consumer's position before any was taken)."""
        lag: dict[Hashable, int] = {}
        for tp, p in self.progress.items():
            end = highwater(tp)
            start = p.offset + 1 if p.offset is not None else position(tp)
            if end is not None and start is not None:
                lag[tp] = max(0, end - start)
        return lag
