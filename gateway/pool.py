"""Decode workers: large requests are decoded in a small process pool, never on the event loop.

Threads would not do: ujson holds the GIL for a whole parse (~150 ms for a 10 MB batch), so the event
loop would stall as long as in the same thread. A process decodes a request to its Kafka messages
(gateway.prepare.prepare) and sends back bytes only, which pickle at memcpy speed.

At most ``workers`` requests are decoded at once and at most ``max_waiting`` wait for a worker; past
that a request is answered 503 with Retry-After (load shed at once rather than queued without bound:
a waiting request holds its body in memory, and a client told to retry later costs nothing).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gateway.errors import too_large, unavailable

log = logging.getLogger("eventpipe.gateway")

# Address space of a worker: a backstop (MemoryError -> 413) below the machine's OOM killer; the
# request limits keep a decode near 200 MB (docs/capture.md, "Limits").
WORKER_ADDRESS_SPACE = 2 * 1024**3
# Workers are replaced now and then so a fragmented heap after a large decode is given back.
TASKS_PER_WORKER = 200


def _init_worker(address_space: int) -> None:
    if address_space > 0:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))


def _warm() -> bool:
    import gateway.prepare  # noqa: F401 - imported once per worker, before the first request

    return True


class DecodePool:
    def __init__(self, workers: int = 1, max_waiting: int = 4, address_space: int = WORKER_ADDRESS_SPACE) -> None:
        self.workers = max(1, workers)
        self.max_waiting = max(0, max_waiting)
        self.address_space = address_space
        self._slots = asyncio.Semaphore(self.workers)
        self._queued = 0  # requests in run(): waiting for a slot or decoding
        self._executor: ProcessPoolExecutor | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        # forkserver: workers fork from a clean server process, not from the gateway with its threads
        # and sockets; gateway.prepare is imported there once.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["gateway.prepare"])
        return ProcessPoolExecutor(
            self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self.address_space,),
            max_tasks_per_child=TASKS_PER_WORKER,
        )

    async def start(self) -> None:
        self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _warm) for _ in range(self.workers)))

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def busy(self) -> int:
        return self._queued

    async def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in a worker; 503 when too many wait, 413 when the decode ran out of memory."""
        if self._queued >= self.workers + self.max_waiting:
            raise unavailable("Too many large requests are being decoded, please retry.", retry_after=1)
        self._queued += 1
        try:
            async with self._slots:
                if self._executor is None:
                    self._executor = self._new_executor()
                executor = self._executor
                try:
                    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
                except MemoryError:
                    raise too_large("Payload cannot be decoded within the gateway's memory limit.") from None
                except BrokenProcessPool:
                    # The worker died (killed, or out of memory below the rlimit): replace the pool.
                    # The request that was in it is refused; a deterministic crash must not be retried
                    # forever, so this is a 413, not a 503.
                    log.warning("decode worker died; replacing the pool")
                    if self._executor is executor:
                        executor.shutdown(wait=False, cancel_futures=True)
                        self._executor = None
                    raise too_large("Payload cannot be decoded within the gateway's limits.") from None
        finally:
            self._queued -= 1
