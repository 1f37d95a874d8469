"""One deadline for many concurrent waits: a timer per time slot instead of one per request.

``asyncio.timeout`` schedules and cancels a timer for every request (~5 µs of the gateway's ~200 µs
per single-event request, on 2 shared cores). The gateway's waits for Kafka acks all have the same
timeout, so requests whose deadlines fall into the same slot (``slot_s``, 0.1 s) share one timer; a
request that finishes in time only leaves a set. A request still waiting when its slot's timer fires
is cancelled, and :meth:`Deadlines.expired` tells that cancellation from any other, like
``asyncio.timeout`` does (the task's cancellation count), so it can be answered as a timeout.

A deadline is rounded up to the end of its slot: a wait may last up to ``slot_s`` longer than the
timeout, never shorter.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass


@dataclass(slots=True)
class Wait:
    slot: float
    task: asyncio.Task[object]
    cancelling: int  # the task's cancellation requests when the wait began


class Deadlines:
    def __init__(self, timeout_s: float, slot_s: float = 0.1) -> None:
        self.timeout_s = timeout_s
        self.slot_s = slot_s
        self._slots: dict[float, set[asyncio.Task[object]]] = {}

    def enter(self) -> Wait:
        """Start the current task's wait; pair with :meth:`leave` (no await in between them missed)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a deadline is for a task's wait"
        slot = math.ceil((loop.time() + self.timeout_s) / self.slot_s) * self.slot_s
        waiting = self._slots.get(slot)
        if waiting is None:
            waiting = self._slots[slot] = set()
            loop.call_at(slot, self._expire, slot)
        waiting.add(task)
        return Wait(slot, task, task.cancelling())

    def leave(self, wait: Wait) -> bool:
        """End the wait; False when its deadline had passed (the task was cancelled for it)."""
        waiting = self._slots.get(wait.slot)
        if waiting is None or wait.task not in waiting:
            return False
        waiting.discard(wait.task)
        return True

    def expired(self, wait: Wait, left_in_time: bool) -> bool:
        """After a CancelledError in the wait: True when it was this deadline's (then the cancellation
        is withdrawn and the caller answers a timeout), False when someone else cancelled the task."""
        return not left_in_time and wait.task.uncancel() <= wait.cancelling

    def _expire(self, slot: float) -> None:
        for task in self._slots.pop(slot, ()):
            task.cancel()

    def __len__(self) -> int:
        """Waits in progress."""
        return sum(map(len, self._slots.values()))
