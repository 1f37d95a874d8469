"""The fault suite's harness: a whole stack under ``eventpipe run`` (so the supervisor heals it), a
client that retries like an SDK, faults, and the exact figures each case prints.

A case streams ``N`` events, each with a client ``uuid`` (what posthog-js sends), in batches that the
client retries on anything but a 200 (connection refused, 503, timeouts), with backoff, until
accepted. A fault is injected once ``at`` of the events are acknowledged. Afterwards the case waits —
no one touches the stack — until ClickHouse holds every uuid, then counts rows before and after
``OPTIMIZE … FINAL`` and sends a probe batch to prove the stack serves again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from eventpipe import status
from tests.stack import ROOT, Stack, poll

RESULTS: list[CaseResult] = []  # printed as one table at the end of the run (conftest.py)


@dataclass
class CaseResult:
    case: str
    sent: int
    stored: int  # uniqExact(uuid)
    rows: int  # count() before OPTIMIZE FINAL
    final: int  # count() after OPTIMIZE FINAL
    retries: int  # batches the client had to send again
    recovered_s: float  # fault -> every event stored
    serving: bool

    @property
    def duplicates(self) -> int:
        return self.rows - self.stored

    @property
    def ok(self) -> bool:
        return self.stored == self.sent and self.final == self.sent and self.serving

    def line(self) -> str:
        return (
            f"{self.case:<44} N={self.sent:>6}  stored={self.stored:>6}  duplicates={self.duplicates:>5}  "
            f"after FINAL={self.final:>6}  client retries={self.retries:>4}  recovered in {self.recovered_s:5.1f}s  "
            f"serving={'yes' if self.serving else 'NO'}"
        )


def stage_pids(stack: Stack) -> dict[str, int]:
    """The supervisor's record of its children (what `eventpipe status` reads)."""
    return status.stage_pids(stack.settings)


def local_service(script: str, action: str) -> None:
    """deploy/local/<script>.sh start|stop (the platform restarting a service, not eventpipe)."""
    subprocess.run(["bash", str(ROOT / "deploy" / "local" / f"{script}.sh"), action], check=True, timeout=180)


@dataclass
class Client:
    """A retrying capture client: each batch is re-sent, unchanged (same uuids), until it gets a 200."""

    url: str
    api_key: str
    acked: int = 0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    milestone: int = 0  # `reached` is set once this many events are acknowledged
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, session: aiohttp.ClientSession, batch: list[dict[str, object]]) -> None:
        delay = 0.2
        body = {"api_key": self.api_key, "batch": batch}
        while True:
            try:
                async with session.post(f"{self.url}/batch/", json=body, timeout=aiohttp.ClientTimeout(30)) as r:
                    await r.read()
                    if r.status == 200:
                        self.acked += len(batch)
                        if self.acked >= self.milestone:
                            self.reached.set()
                        return
                    outcome = str(r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def stream(self, events: list[dict[str, object]], per_batch: int = 200, concurrency: int = 4) -> None:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one(batch: list[dict[str, object]]) -> None:
                async with sem:
                    await self.send(session, batch)

            batches = [events[i : i + per_batch] for i in range(0, len(events), per_batch)]
            await asyncio.gather(*(one(b) for b in batches))


def make_events(n: int, tag: str) -> list[dict[str, object]]:
    return [
        {"event": "chaos", "uuid": str(uuid.uuid4()), "distinct_id": f"{tag}-{i % 500}", "properties": {"i": i}}
        for i in range(n)
    ]


class ChaosStack:
    """A stack run by `eventpipe run` (its supervisor restarts dead stages) on the shared services."""

    def __init__(self, tmp: Path) -> None:
        self.stack = Stack(tmp)
        self.stack.uses_clickhouse = True
        self.supervisor: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChaosStack:
        self.supervisor = self.stack.spawn("run")
        poll(lambda: (self.stack.home / "run" / "ready").exists(), 120, 0.2, "eventpipe run ready")
        self.api_key = self.stack.create_team("chaos")
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.stack.dump_logs()
        self.stack.close()

    def kill(self, stage: str) -> None:
        os.kill(stage_pids(self.stack)[stage], signal.SIGKILL)

    def count(self, expr: str) -> int:
        return int(self.stack.sql(f"SELECT {expr} AS n FROM events WHERE event = 'chaos'")[0]["n"])

    def run_case(
        self,
        case: str,
        fault: Callable[[ChaosStack], Awaitable[None]],
        n: int = 20_000,
        at: float = 0.3,
        settle_s: float = 300,
    ) -> CaseResult:
        events = make_events(n, case.split()[0])
        client = Client(self.stack.url, self.api_key, milestone=int(n * at))
        fired_at: list[float] = []

        async def inject() -> None:
            await client.reached.wait()
            fired_at.append(time.monotonic())
            await fault(self)

        async def main() -> None:
            await asyncio.gather(client.stream(events), inject())

        asyncio.run(main())
        poll(lambda: self.count("uniqExact(uuid)") >= n, settle_s, 1.0, f"{case}: every event stored")
        recovered = time.monotonic() - fired_at[0]
        stored, rows = self.count("uniqExact(uuid)"), self.count("count()")
        self.optimize()  # the CLI is read-only: OPTIMIZE goes through the writer
        final = self.count("count()")
        serving = self.serves()
        result = CaseResult(case, n, stored, rows, final, client.retries, recovered, serving)
        RESULTS.append(result)
        print(result.line(), flush=True)
        return result

    def optimize(self) -> None:
        native = self.stack.clickhouse_client()
        try:
            native.execute("OPTIMIZE TABLE events FINAL")
        finally:
            native.disconnect()

    def serves(self) -> bool:
        """A probe batch, sent once the fault is over, is accepted and stored: the stack healed."""
        name = f"probe-{uuid.uuid4().hex[:8]}"
        probe = [{"event": name, "uuid": str(uuid.uuid4()), "distinct_id": "probe"} for _ in range(10)]
        asyncio.run(Client(self.stack.url, self.api_key).stream(probe))
        query = f"SELECT uniqExact(uuid) AS n FROM events WHERE event = '{name}'"
        try:
            poll(lambda: int(self.stack.sql(query)[0]["n"]) >= len(probe), 120, 0.5, "probe stored")
            return True
        except AssertionError:
            return False
