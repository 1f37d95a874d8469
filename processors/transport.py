"""The processors' Faust transport: aiokafka's, with a consumer that never commits past an unread offset.

Registered as the ``eventpipe`` transport (``faust.transports`` entry point in pyproject.toml, Faust's
public extension point for drivers); the app's broker URL is ``eventpipe://host:port``.

faust-streaming 0.15 decides what to commit from the offsets its streams acked (``_new_offset``), and
two of its rules let that run past a message no agent ever processed:

* the head check ``min(acked) - committed > 1`` lets exactly one missing offset through (``committed``
  is the *next* offset to read, so any ``min(acked) > committed`` is a hole), and it is skipped when the
  committed offset is 0;
* a jump in the offsets the fetcher hands over (``_add_gap``) is recorded as a "gap" and treated as
  acked. That is right for compacted or transactional topics, whose offsets have holes; the topics our
  agents read are neither (plain, idempotent producers), so a jump means messages were dropped.

Around rebalances a fetched message can be dropped without an ack (the kill test in
tests/test_it_identity.py lost 1-7 of 1200 events in about 1 run of 7 that way). With this consumer a
dropped message holds its partition's commits instead, and the consumer *heals* the hole: once it has
lasted :data:`HEAL_AFTER_S`, the partition is sought back to its committed offset and read again from
there (messages after the hole are processed twice: at-least-once, collapsed downstream by uuid and
version). A hole below the log start (retention deleted the records) is stepped over: nothing there can
be read again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger("eventpipe.processors.transport")

HEAL_AFTER_S = 2.0


class Consumer(faust_aiokafka.Consumer):
    """aiokafka's Faust consumer with gap-free commits (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holes: dict[TP, tuple[int, float]] = {}  # tp -> (committed offset, first seen)
        self._healing: set[TP] = set()

    def committed_offset(self, tp: TP) -> int | None:
        """The partition's committed offset as this consumer knows it: the next offset to read."""
        return self._committed_offset.get(tp)

    def _new_offset(self, tp: TP) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if acked and committed is not None:
            first = min(acked)
            if first > committed:
                self._hole(tp, committed, first)
                return None
        self._holes.pop(tp, None)
        return super()._new_offset(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Not an ack: the offsets in between were dropped, not absent (see the module docstring).
        log.warning("fetcher skipped offsets %d..%d of %s; they stay uncommitted", offset_from, offset_to, tp)

    def _hole(self, tp: TP, committed: int, first_acked: int) -> None:
        now = time.monotonic()
        seen = self._holes.get(tp)
        if seen is None or seen[0] != committed:
            self._holes[tp] = (committed, now)
            return
        if now - seen[1] < HEAL_AFTER_S or tp in self._healing:
            return
        self._holes[tp] = (committed, now)
        self._healing.add(tp)
        task = asyncio.get_running_loop().create_task(self._heal(tp, committed, first_acked))
        task.add_done_callback(lambda _t: self._healing.discard(tp))

    async def _heal(self, tp: TP, committed: int, first_acked: int) -> None:
        if tp not in self.assignment():
            return
        start = (await self.earliest_offsets(tp)).get(tp, 0)
        if start > committed:
            log.warning("offsets %d..%d of %s were deleted by retention; committing past them", committed, start, tp)
            self._committed_offset[tp] = start
            return
        log.warning(
            "offset %d of %s was never processed (acked from %d on): reading %s again from %d",
            committed, tp, first_acked, tp, committed,
        )
        await self.seek(tp, committed)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`."""

    Consumer = Consumer
