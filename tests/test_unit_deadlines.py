"""gateway/deadlines.py: one timer per slot of deadlines, told apart from other cancellations."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadlines import Deadlines


async def _wait(deadlines: Deadlines, seconds: float) -> str:
    wait = deadlines.enter()
    try:
        try:
            await asyncio.sleep(seconds)
        finally:
            in_time = deadlines.leave(wait)
    except asyncio.CancelledError:
        if deadlines.expired(wait, in_time):
            return "timed out"
        raise
    return "done"


def test_a_wait_within_the_timeout_ends_normally() -> None:
    async def main() -> None:
        deadlines = Deadlines(0.5, slot_s=0.05)
        assert await _wait(deadlines, 0.01) == "done"
        assert len(deadlines) == 0

    asyncio.run(main())


def test_a_wait_past_its_deadline_is_a_timeout_and_leaves_the_task_uncancelled() -> None:
    async def main() -> None:
        deadlines = Deadlines(0.05, slot_s=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _wait(deadlines, 5) == "timed out"
        assert 0.05 <= loop.time() - started < 1.0  # rounded up to its slot, never earlier
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.01)  # the task goes on: nothing cancels it later

    asyncio.run(main())


def test_many_waits_share_their_slots_and_all_time_out() -> None:
    async def main() -> None:
        deadlines = Deadlines(0.05, slot_s=0.05)
        results = await asyncio.gather(*(_wait(deadlines, 5) for _ in range(50)))
        assert results == ["timed out"] * 50
        assert len(deadlines) == 0

    asyncio.run(main())


def test_another_cancellation_is_not_taken_for_a_timeout() -> None:
    async def main() -> None:
        deadlines = Deadlines(5)
        task = asyncio.create_task(_wait(deadlines, 5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(deadlines) == 0

    asyncio.run(main())
