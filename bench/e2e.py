"""End to end: the whole stack on this machine, from HTTP to rows in ClickHouse.

Gateway, one processor worker and the sink run as ``python -m eventpipe.cli <stage>`` subprocesses with
their own topic prefix, a temporary ``EVENTPIPE_HOME`` and a fresh ClickHouse database (the sink creates
it with the project's DDL); one team. The load generator (this process) posts prebuilt 100-event
``/batch/`` bodies of the gateway benchmark's posthog-js-like events, every event with its own uuid (the
events table collapses equal uuids, so a reused body must not repeat them). Phases, in order:

1. ``warm-up`` — a few batches, until they are stored: the pipeline flows before anything is timed.
2. ``sustained`` — ``--e2e-connections`` keep-alive connections post as fast as the gateway answers for
   ``--e2e-seconds``; then the tail drains until ``count()`` of the events table reaches the accepted
   events. Accepted events/s, stored events/s (first send -> all stored), stored == accepted, and every
   process's CPU µs per event over the phase (gateway, processors, sink, broker, ClickHouse, this process).
3. ``latency`` — open-loop paced load (batches on a schedule, not waiting for answers) at
   ``--e2e-latency-rate`` (default half the sustained stored rate) for ``--e2e-latency-seconds``; some
   batches carry a probe (first event named :data:`PROBE_EVENT`): capture -> queryable is the time from its
   request's send until a poll of ClickHouse (every :data:`PROBE_POLL_S`) first returns its uuid.
4. ``soak`` — the same paced load for ``--soak-seconds`` (0 skips it), every stage's RSS sampled every
   :data:`RSS_EVERY_S`: growth from after warm-up (the first :data:`SOAK_WARMUP` of the soak) to the end.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import ujson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    CpuMeter,
    Stage,
    clickhouse_server_pid,
    cpu_line,
    delete_kafka_state,
    print_table,
    quiet_kafka_logs,
    run_async,
    stack_env,
    stop_stage,
)
from bench.gateway import (
    BATCH_SIZE,
    JSON,
    POOL_EVENTS,
    CpuSample,
    _broker_pid,
    _env_int,
    _event,
    _iso,
    _settings,
)
from bench.sink import _drop_databases
from bench.summary import Row, at_least, at_most, check, info, table
from clickhouse.store import connection_args
from eventpipe import config
from eventpipe.config import StoreURL
from eventpipe.kafka import create_team, topics_for
from eventpipe.supervisor import gateway_ready, stages_ready
from tests.procs import rss_kib

TARGET_RATE = 20_000.0  # issue 12: events/s end to end, sustained, all stages on this machine
TARGET_P99_MS = 2_000.0  # capture -> queryable at half that rate
TARGET_GROWTH_PCT = 10.0  # RSS growth after warm-up over the soak
PROBE_EVENT = "e2e_probe"
PROBES_PER_S = 20  # about this many probes a second (at most one per batch)
PROBE_POLL_S = 0.05
PROBE_TAIL_S = 60.0  # after the load stops, how long probes may still take to appear
COUNT_POLL_S = 0.2
PROGRESS_EVERY_S = 10.0
STALL_S = 60.0  # the stored count not moving this long: give up waiting
WARMUP_BATCHES = 20
MAX_IN_FLIGHT = 512  # paced load: sends skipped (and counted) beyond this many unanswered requests
RSS_EVERY_S = 10.0
SOAK_WARMUP = 0.2  # share of the soak before the "after warm-up" RSS sample
STAGES = ("gateway", "processors", "sink")  # RSS verdicts for these; the broker and ClickHouse are shown
# Eight hex digits in every event's uuid, replaced by the send's number: no two events of a run share a uuid.
UUID_STAMP = "e2e0c0de"


# ----------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("e2e benchmark (also uses --kafka and --clickhouse)")
    g.add_argument("--e2e-seconds", type=float, default=_env_int("BENCH_E2E_SECONDS", 60),
                   help="sustained phase: seconds of load as fast as the gateway answers (env BENCH_E2E_SECONDS, "
                   "default 60)")
    g.add_argument("--e2e-connections", type=int, default=_env_int("BENCH_E2E_CONNECTIONS", 16),
                   help="keep-alive connections of the load generator (env BENCH_E2E_CONNECTIONS, default 16)")
    g.add_argument("--e2e-latency-rate", type=float, default=_env_int("BENCH_E2E_LATENCY_RATE", 0),
                   help="latency and soak phases: paced events/s (env BENCH_E2E_LATENCY_RATE, default 0: half the "
                   "sustained phase's stored events/s)")
    g.add_argument("--e2e-latency-seconds", type=float, default=_env_int("BENCH_E2E_LATENCY_SECONDS", 30),
                   help="latency phase: seconds of paced load with probes (env BENCH_E2E_LATENCY_SECONDS, default 30)")
    g.add_argument("--soak-seconds", type=float, default=_env_int("BENCH_SOAK_SECONDS", 600),
                   help="memory soak: seconds of paced load, RSS sampled every 10 s (env BENCH_SOAK_SECONDS, "
                   "default 600; 0 skips it)")


@dataclasses.dataclass(frozen=True)
class Options:
    seconds: float
    connections: int
    latency_rate: float
    latency_seconds: float
    soak_seconds: float
    kafka: str
    clickhouse: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        if not args.clickhouse:
            raise SystemExit("e2e benchmark: no ClickHouse server (see the sink benchmark's --clickhouse; start the "
                             "local one with bash deploy/local/clickhouse.sh start)")
        return cls(
            seconds=max(1.0, args.e2e_seconds),
            connections=max(1, args.e2e_connections),
            latency_rate=max(0.0, args.e2e_latency_rate),
            latency_seconds=max(1.0, args.e2e_latency_seconds),
            soak_seconds=max(0.0, args.soak_seconds),
            kafka=args.kafka,
            clickhouse=args.clickhouse.rstrip("/"),
        )


# ---------------------------------------------------------------------------------------- payloads


def event_uuid(stamp: str, i: int) -> str:
    """The uuid of event ``i`` of the pool in the request numbered ``stamp`` (8 hex digits)."""
    return f"{stamp}-0000-4000-8000-{i:012x}"


@dataclasses.dataclass(frozen=True)
class Bodies:
    """The /batch/ bodies of :data:`bench.gateway.POOL_EVENTS` events, 100 a body, each event with a uuid
    holding :data:`UUID_STAMP`; ``probe`` are the same bodies with the first event named PROBE_EVENT."""

    plain: list[bytes]
    probe: list[bytes]

    @classmethod
    def build(cls, token: str) -> Bodies:
        now = datetime.now(UTC)
        base = now - timedelta(minutes=30)
        events = [{**_event(i, base), "uuid": event_uuid(UUID_STAMP, i)} for i in range(POOL_EVENTS)]
        chunks = [events[i : i + BATCH_SIZE] for i in range(0, len(events), BATCH_SIZE)]

        def body(batch: list[dict[str, Any]]) -> bytes:
            data = ujson.dumps({"api_key": token, "sent_at": _iso(now), "batch": batch}).encode()
            assert data.count(UUID_STAMP.encode()) == len(batch)  # the stamp is nowhere else
            return data

        return cls([body(c) for c in chunks], [body([{**c[0], "event": PROBE_EVENT}, *c[1:]]) for c in chunks])

    def stamped(self, send: int, probe: bool) -> tuple[bytes, str]:
        """The body of the ``send``-th request of the run, and the uuid of its first event."""
        bodies = self.probe if probe else self.plain
        index = send % len(bodies)
        stamp = f"{send:08x}"
        return bodies[index].replace(UUID_STAMP.encode(), stamp.encode()), event_uuid(stamp, index * BATCH_SIZE)


# ------------------------------------------------------------------------------------------- load


@dataclasses.dataclass
class ProbeTimes:
    """perf_counter times of every probe (by uuid): its request sent, answered 200, its row produced to
    ``clickhouse_events`` (the processors are done with it), and queryable in ClickHouse."""

    sent: dict[str, float] = dataclasses.field(default_factory=dict)
    answered: dict[str, float] = dataclasses.field(default_factory=dict)
    row: dict[str, float] = dataclasses.field(default_factory=dict)
    queryable: dict[str, float] = dataclasses.field(default_factory=dict)

    def pending(self, seen: dict[str, float]) -> list[str]:
        return [u for u in list(self.sent) if u not in seen]


@dataclasses.dataclass
class Load:
    """The load generator over the whole run: requests are numbered across phases (their uuids never
    repeat), accepted events (200 answers) add up across phases as the events table does."""

    session: aiohttp.ClientSession
    url: str
    bodies: Bodies
    sent: int = 0
    accepted: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    probes: ProbeTimes = dataclasses.field(default_factory=ProbeTimes)  # of the current phase

    async def post(self, probe: bool = False) -> None:
        send, self.sent = self.sent, self.sent + 1
        body, first = self.bodies.stamped(send, probe)
        if probe:
            self.probes.sent[first] = time.perf_counter()
        try:
            async with self.session.post(self.url, data=body, headers=JSON) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, reason = 0, type(exc).__name__
        else:
            reason = f"HTTP {status}"
        if status == 200:
            self.accepted += BATCH_SIZE
            if probe:
                self.probes.answered[first] = time.perf_counter()
            return
        self.failures[reason] += 1  # refused: its events, a probe among them, will not be stored
        self.probes.sent.pop(first, None)


async def saturate(load: Load, seconds: float, connections: int) -> None:
    """Closed loop: every connection sends its next batch as soon as the previous one was answered."""
    end = time.perf_counter() + seconds

    async def connection() -> None:
        while time.perf_counter() < end:
            await load.post()

    await asyncio.gather(*(connection() for _ in range(connections)))


@dataclasses.dataclass
class Pacing:
    sends: int = 0
    skipped: int = 0  # not sent: MAX_IN_FLIGHT requests were unanswered
    max_late_s: float = 0.0  # how far behind its schedule this process got
    max_in_flight: int = 0
    seconds: float = 0.0  # from the first send to the last answer

    def describe(self) -> str:
        text = f"{self.sends:,} batches sent on schedule, at most {self.max_in_flight} unanswered at once"
        if self.max_late_s > 0.05:
            text += f"; the scheduler fell up to {self.max_late_s * 1000:.0f} ms behind (this process was busy)"
        if self.skipped:
            text += f"; {self.skipped:,} batches NOT sent ({MAX_IN_FLIGHT} unanswered: the stack could not keep up)"
        return text


async def paced(load: Load, rate: float, seconds: float, probe_every: int) -> Pacing:
    """Open loop: a batch every ``100 / rate`` s whether or not the earlier ones were answered (queueing
    shows up as latency instead of slowing the load down); every ``probe_every``-th carries a probe."""
    interval = BATCH_SIZE / rate
    pacing = Pacing()
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for i in range(max(1, int(seconds / interval))):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            pacing.max_late_s = max(pacing.max_late_s, -delay)
            await asyncio.sleep(0)  # behind schedule: still let answers in
        if len(tasks) >= MAX_IN_FLIGHT:
            pacing.skipped += 1
            continue
        task = asyncio.create_task(load.post(probe=i % probe_every == 0))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        pacing.sends += 1
        pacing.max_in_flight = max(pacing.max_in_flight, len(tasks))
    await asyncio.gather(*tasks)
    pacing.seconds = time.perf_counter() - start
    return pacing


# ------------------------------------------------------------------------------------------ store


class Database:
    """The run's ClickHouse database, over two clients (the counter and the probe poller run at once, and a
    clickhouse-driver client serves one query at a time)."""

    def __init__(self, url: StoreURL) -> None:
        from clickhouse_driver import Client

        def client() -> Any:
            return Client(**connection_args(url), database=url.database, connect_timeout=5, send_receive_timeout=60)

        self.counter, self.poller = client(), client()

    def close(self) -> None:
        self.counter.disconnect()
        self.poller.disconnect()

    async def count(self) -> int:
        return int((await asyncio.to_thread(self.counter.execute, "SELECT count() FROM events"))[0][0])

    async def distinct(self) -> int:
        return int((await asyncio.to_thread(self.counter.execute, "SELECT uniqExact(uuid) FROM events"))[0][0])

    async def found(self, team_id: int, uuids: Sequence[str]) -> list[str]:
        """Which of the probes are queryable (the event name is in the table's sort key: a narrow read)."""
        rows = await asyncio.to_thread(
            self.poller.execute,
            "SELECT toString(uuid) FROM events WHERE team_id = %(team)s AND event = %(event)s AND uuid IN %(uuids)s",
            {"team": team_id, "event": PROBE_EVENT, "uuids": tuple(uuids)},
        )
        return [r[0] for r in rows]


@dataclasses.dataclass
class Drain:
    expected: int
    rows: int = 0  # count(): duplicates (re-deliveries) included until a merge collapses them
    stored: int = 0  # uniqExact(uuid): distinct events stored
    done_at: float | None = None  # when stored reached expected; None: it did not (timeout or stall)

    @property
    def exact(self) -> bool:
        return self.done_at is not None and self.stored == self.expected

    def describe(self) -> str:
        verdict = "stored == accepted" if self.exact else "STORED != ACCEPTED  <<<<<<<<<<"
        text = f"the table holds {self.stored:,} distinct events of {self.expected:,} accepted so far: {verdict}"
        if self.stored > self.expected:
            text += (" (more than accepted: requests that failed on this side, e.g. a client timeout, had reached "
                     "Kafka anyway)")
        if self.rows != self.stored:
            text += (f" ({self.rows:,} rows: {self.rows - self.stored:,} duplicates from at-least-once "
                     f"re-deliveries, which the ReplacingMergeTree collapses at merge)")
        return text


async def wait_stored(db: Database, expected: int, stages: Sequence[Stage], started: float, timeout_s: float
                      ) -> Drain:
    """Poll until ``expected`` distinct events are stored; a progress line every PROGRESS_EVERY_S. Gives up
    (``done_at`` None) after ``timeout_s`` or when the count has not moved for STALL_S."""
    drain = Drain(expected)
    deadline = time.perf_counter() + timeout_s
    last_change = last_print = time.perf_counter()
    printed = drain.rows = await db.count()
    while True:
        for stage in stages:
            stage.check_alive()
        rows = await db.count()
        now = time.perf_counter()
        if rows != drain.rows:
            drain.rows, last_change = rows, now
        if rows >= expected:
            drain.stored = await db.distinct()
            if drain.stored >= expected:
                drain.done_at = now
                return drain
        if now - last_print >= PROGRESS_EVERY_S:
            print(f"     … {rows:,} of {expected:,} stored ({rows / expected:.0%}), "
                  f"{(rows - printed) / (now - last_print):,.0f} events/s over the last {now - last_print:.0f} s, "
                  f"{now - started:.0f} s since the first send", flush=True)
            printed, last_print = rows, now
        if now - last_change > STALL_S or now > deadline:
            drain.stored = await db.distinct()
            why = f"no progress for {STALL_S:.0f} s" if now - last_change > STALL_S else f"{timeout_s:.0f} s passed"
            print(f"   GAVE UP waiting ({why}): {drain.describe()}")
            return drain
        await asyncio.sleep(COUNT_POLL_S if rows < expected else 1.0)


# ------------------------------------------------------------------------------------------ probes


def percentile(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


LEGS = {  # where a probe's time goes: (from, to) of ProbeTimes fields
    "gateway (send -> 200, Kafka acks included)": ("sent", "answered"),
    "processors (200 -> row on clickhouse_events)": ("answered", "row"),
    "sink (row -> queryable: batch wait, insert)": ("row", "queryable"),
}


@dataclasses.dataclass
class Probes:
    latencies_ms: list[float]  # send -> queryable
    legs_ms: dict[str, list[float]]
    missing: int

    @classmethod
    def of(cls, t: ProbeTimes) -> Probes:
        done = [u for u in t.sent if u in t.queryable]

        def leg(start: dict[str, float], end: dict[str, float]) -> list[float]:
            return [(end[u] - start[u]) * 1000 for u in done if u in start and u in end]

        return cls(leg(t.sent, t.queryable),
                   {name: leg(getattr(t, a), getattr(t, b)) for name, (a, b) in LEGS.items()},
                   len(t.sent) - len(done))

    def percentile(self, q: int) -> float:
        return percentile(self.latencies_ms, q)

    def describe(self) -> str:
        if len(self.latencies_ms) < 2:
            return f"capture -> queryable: {len(self.latencies_ms)} probes seen, too few for percentiles"
        text = (f"capture -> queryable over {len(self.latencies_ms):,} probes: p50 {self.percentile(50):,.0f} ms, "
                f"p90 {self.percentile(90):,.0f} ms, p99 {self.percentile(99):,.0f} ms, max "
                f"{max(self.latencies_ms):,.0f} ms (target p99 ≤ {TARGET_P99_MS:,.0f} ms; resolution: the "
                f"{PROBE_POLL_S * 1000:.0f} ms poll)")
        for name, values in self.legs_ms.items():
            if len(values) >= 2:
                text += f"\n    {name}: p50 {percentile(values, 50):,.0f} ms, p99 {percentile(values, 99):,.0f} ms"
        if self.missing:
            text += f"\n    {self.missing:,} accepted probes NOT queryable {PROBE_TAIL_S:.0f} s after the load stopped"
        return text


async def poll_queryable(db: Database, team_id: int, times: ProbeTimes, done: asyncio.Event) -> None:
    """Every PROBE_POLL_S, one query for every probe sent and not yet queryable; returns once ``done`` is
    set and none is outstanding (the caller bounds the tail)."""
    while True:
        pending = times.pending(times.queryable)
        if not pending and done.is_set():
            return
        if pending:
            found = await db.found(team_id, pending)
            now = time.perf_counter()
            for u in found:
                times.queryable.setdefault(u, now)
        await asyncio.sleep(PROBE_POLL_S)


class RowWatcher:
    """Reads ``clickhouse_events`` from its end (probe rows are keyed by their uuid) to time the probes'
    rows: the split between the processors and the sink. Costs this process a consumer of every row."""

    def __init__(self, settings: config.Settings) -> None:
        self.topic, self.partitions = topics_for(settings).events, settings.partitions
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False)

    async def __aenter__(self) -> RowWatcher:
        await self.consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolved now, before the first probe is sent
            await self.consumer.position(tp)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.consumer.stop()

    async def watch(self, times: ProbeTimes, done: asyncio.Event) -> None:
        while not (done.is_set() and not times.pending(times.row)):
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for messages in batches.values():
                for m in messages:
                    key = m.key.decode() if m.key else ""
                    if key in times.sent:
                        times.row.setdefault(key, now)


async def paced_with_probes(rig: Rig, rate: float, seconds: float) -> tuple[Pacing, Probes]:
    """Paced load; some batches carry a probe, timed until queryable. After the load, probes get
    PROBE_TAIL_S to appear; those that do not are counted missing."""
    rig.load.probes = times = ProbeTimes()
    done = asyncio.Event()
    async with RowWatcher(rig.settings) as rows:
        watchers = [asyncio.create_task(poll_queryable(rig.db, rig.team_id, times, done)),
                    asyncio.create_task(rows.watch(times, done))]
        try:
            pacing = await paced(rig.load, rate, seconds, max(1, round(rate / BATCH_SIZE / PROBES_PER_S)))
            done.set()
            await asyncio.wait(watchers, timeout=PROBE_TAIL_S)
        finally:
            for task in watchers:
                task.cancel()
    return pacing, Probes.of(times)


# --------------------------------------------------------------------------------------------- RSS


@dataclasses.dataclass
class RssSeries:
    at: list[float] = dataclasses.field(default_factory=list)  # seconds since the soak started
    kib: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def sample(self, pids: dict[str, int | None], elapsed: float) -> None:
        self.at.append(elapsed)
        for name, pid in pids.items():
            self.kib.setdefault(name, []).append(rss_kib(pid, missing_ok=True) if pid else 0)

    def growth(self, name: str, seconds: float) -> tuple[int, int, float] | None:
        """(KiB after warm-up, KiB at the end, growth %): the first sample past SOAK_WARMUP of the soak."""
        values = self.kib.get(name, [])
        warm = next((i for i, t in enumerate(self.at) if t >= SOAK_WARMUP * seconds), None)
        if warm is None or not values or not values[warm] or warm == len(values) - 1:
            return None
        return values[warm], values[-1], (values[-1] - values[warm]) / values[warm] * 100

    def print(self, seconds: float) -> None:
        step = max(1, len(self.at) // 20)  # at most ~20 points a line
        picks = sorted({*range(0, len(self.at), step), len(self.at) - 1})
        print(f"    RSS MB at {', '.join(f'{self.at[i]:.0f}' for i in picks)} s:")
        width = max(map(len, self.kib))
        for name, values in self.kib.items():
            print(f"      {name:<{width}} " + " ".join(f"{values[i] / 1024:.0f}" for i in picks))
        for name in self.kib:
            g = self.growth(name, seconds)
            if g is None:
                print(f"    {name}: too few samples for a verdict")
                continue
            verdict = "(not a stage: shown only)"
            if name in STAGES:
                verdict = f"{'flat' if g[2] <= TARGET_GROWTH_PCT else 'GROWS'} (target ≤ {TARGET_GROWTH_PCT:.0f} %)"
            print(f"    {name}: {g[0] / 1024:,.0f} MB after warm-up ({SOAK_WARMUP:.0%} of the soak) -> "
                  f"{g[1] / 1024:,.0f} MB at the end: {g[2]:+.1f} % {verdict}")


async def sample_rss(series: RssSeries, pids: dict[str, int | None], started: float) -> None:
    while True:
        series.sample(pids, time.perf_counter() - started)
        await asyncio.sleep(RSS_EVERY_S)


# ------------------------------------------------------------------------------------------- stack


async def wait_ready(settings: config.Settings, stages: Sequence[Stage], timeout_s: float = 120) -> float:
    """Until the gateway answers /_ready and the consumers wrote their ready markers (as ``eventpipe run``)."""
    started = time.perf_counter()
    while True:
        for stage in stages:
            stage.check_alive()
        if stages_ready(settings) and await asyncio.to_thread(gateway_ready, settings):
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"stack not ready after {timeout_s:.0f} s:\n" + "\n".join(s.tail() for s in stages))
        await asyncio.sleep(0.2)


def cpu_per_event(usage: dict[str, float], events: int) -> dict[str, float]:
    """µs of CPU per event of every measured process (not ``machine``/``others``), and their ``sum``."""
    per = {name: spent / events * 1e6 for name, spent in usage.items() if name not in ("machine", "others")}
    return {**per, "sum": sum(per.values())} if events else {}


@dataclasses.dataclass
class Rig:
    """What every phase works with: the running stack, its database, the load generator, a CPU meter over
    every process involved (the stages, the broker, the ClickHouse server, this process)."""

    settings: config.Settings
    team_id: int
    stages: dict[str, Stage]
    load: Load
    db: Database
    meter: CpuMeter = dataclasses.field(default_factory=CpuMeter)

    def __post_init__(self) -> None:
        self.meter.pids = {**{name: s.pid for name, s in self.stages.items()}, "broker": _broker_pid(),
                           "clickhouse": clickhouse_server_pid(), "load generator": os.getpid()}

    async def stored(self, started: float, timeout_s: float) -> Drain:
        """Until every event accepted so far is stored (see :func:`wait_stored`)."""
        return await wait_stored(self.db, self.load.accepted, list(self.stages.values()), started, timeout_s)


@dataclasses.dataclass
class Phase:
    """One loaded phase: what was accepted while sending, then the drain until it was all stored."""

    name: str
    accepted: int
    load_s: float  # the load itself: from the first send to the last answer
    failures: Counter[str]
    drain: Drain
    started: float
    cpu: dict[str, float]
    pacing: Pacing | None = None
    probes: Probes | None = None
    rss: RssSeries | None = None

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.load_s if self.load_s else 0.0

    @property
    def stored_s(self) -> float | None:
        """First send -> every event stored (the load's whole span plus the drain of its tail)."""
        return self.drain.done_at - self.started if self.drain.done_at is not None else None

    @property
    def stored_rate(self) -> float:
        return self.accepted / self.stored_s if self.stored_s else 0.0

    def print(self) -> None:
        failed = f"; FAILED requests: {dict(self.failures)} (not counted)" if self.failures else ""
        print(f"  accepted: {self.accepted:,} events in {self.load_s:.1f} s -> {self.accepted_rate:,.0f} events/s "
              f"({self.accepted // BATCH_SIZE:,} requests answered 200){failed}")
        if self.pacing is not None:
            print(f"    {self.pacing.describe()}")
        if self.probes is not None:
            print(f"  {self.probes.describe()}")
        text = self.drain.describe()
        if self.stored_s is not None:
            text += (f"; the tail drained {self.stored_s - self.load_s:.1f} s after the load; {self.accepted:,} events "
                     f"stored {self.stored_s:.1f} s after the first send -> {self.stored_rate:,.0f} events/s")
        print(f"  {text}")
        window = self.stored_s or self.load_s
        if self.cpu and self.accepted:
            print("  CPU µs/event (process CPU from the first send until all stored ÷ events): "
                  + ", ".join(f"{name} {us:,.0f}" for name, us in cpu_per_event(self.cpu, self.accepted).items()))
            print(f"    {cpu_line(self.cpu, window, self.accepted)}")
        if self.rss is not None:
            self.rss.print(self.load_s)


async def loaded_phase(rig: Rig, name: str, send: Callable[[], Awaitable[Pacing | tuple[Pacing, Probes] | None]],
                       rss: RssSeries | None = None) -> Phase:
    """Run ``send()`` (the load), then wait until everything accepted so far is stored; CPU over both."""
    accepted, failures = rig.load.accepted, Counter(rig.load.failures)
    first: CpuSample = rig.meter.sample()
    sampler = asyncio.create_task(sample_rss(rss, rig.meter.pids, first.wall)) if rss is not None else None
    try:
        result = await send()
    finally:
        if sampler is not None:
            sampler.cancel()
    pacing, probes = result if isinstance(result, tuple) else (result, None)
    load_s = pacing.seconds if pacing is not None else time.perf_counter() - first.wall
    if rss is not None and load_s - rss.at[-1] > 1:
        rss.sample(rig.meter.pids, load_s)  # the end of the soak, whatever the sampling period left over
    phase_accepted = rig.load.accepted - accepted
    print(f"  load done: {phase_accepted:,} events accepted in {load_s:.1f} s; waiting for them in ClickHouse",
          flush=True)
    drain = await rig.stored(first.wall, timeout_s=120 + phase_accepted / 500)
    return Phase(name, phase_accepted, load_s, rig.load.failures - failures, drain, first.wall,
                 CpuMeter.usage(first, rig.meter.sample()), pacing, probes, rss)


async def run_phases(opts: Options, rig: Rig) -> list[Phase]:
    load = rig.load
    started = time.perf_counter()
    await asyncio.gather(*(load.post() for _ in range(WARMUP_BATCHES)))
    warm = await rig.stored(started, timeout_s=120)
    print(f"-- warm-up: {WARMUP_BATCHES} batches; {warm.describe()} "
          f"{time.perf_counter() - started:.1f} s after the first send")
    if not warm.exact:
        return []

    print(f"-- sustained: {opts.connections} connections post 100-event /batch/ bodies as fast as the gateway "
          f"answers, for {opts.seconds:.0f} s; then until all accepted events are stored")
    sustained = await loaded_phase(rig, "sustained", lambda: saturate(load, opts.seconds, opts.connections))
    sustained.print()
    phases = [sustained]
    if not sustained.drain.exact:
        print("   latency and soak skipped: the sustained phase's events are not all stored")
        return phases

    rate = opts.latency_rate or max(float(BATCH_SIZE), sustained.stored_rate / 2)
    for name, seconds, rss in (("latency", opts.latency_seconds, None), ("soak", opts.soak_seconds, RssSeries())):
        if not seconds:
            continue
        why = "--e2e-latency-rate" if opts.latency_rate else "half the sustained stored rate"
        print(f"-- {name}: open-loop paced load at {rate:,.0f} events/s ({rate / BATCH_SIZE:,.1f} batches/s; {why}) "
              f"for {seconds:.0f} s, probes polled every {PROBE_POLL_S * 1000:.0f} ms"
              + (f", RSS every {RSS_EVERY_S:.0f} s" if rss else ""))
        phase = await loaded_phase(rig, name, lambda s=seconds: paced_with_probes(rig, rate, s), rss)
        phase.print()
        phases.append(phase)
        if not phase.drain.exact:
            break
    return phases


def figures(phases: Sequence[Phase]) -> list[Row]:
    """Headline rows: the sustained rates and CPU per stage, p99 at the paced rate, RSS growth, correctness."""
    by = {p.name: p for p in phases}
    rows: list[Row] = []
    if (s := by.get("sustained")) is not None:
        rows += [
            at_least("e2e", "sustained: accepted events/s", s.accepted_rate, "events/s", TARGET_RATE,
                     note=f"{s.load_s:.0f} s"),
            at_least("e2e", "sustained: stored events/s", s.stored_rate, "events/s", TARGET_RATE,
                     note="first send -> all stored"),
            check("e2e", "sustained: stored == accepted", s.drain.exact,
                  note=f"{s.drain.stored:,} events in the table"),
        ]
        rows += [info("e2e", f"CPU per event: {name}", us, "µs/event")
                 for name, us in cpu_per_event(s.cpu, s.accepted).items()]
    for name in ("latency", "soak"):
        p = by.get(name)
        if p is None or p.probes is None or len(p.probes.latencies_ms) < 2:
            continue
        note = f"{name}, {p.accepted_rate:,.0f} events/s, {len(p.probes.latencies_ms)} probes"
        if name == "latency":
            rows.append(at_most("e2e", "p99 capture -> queryable", p.probes.percentile(99), "ms", TARGET_P99_MS,
                                note=note))
        rows.append(info("e2e", "p50 capture -> queryable", p.probes.percentile(50), "ms", note=note))
    if (soak := by.get("soak")) is not None and soak.rss is not None:
        for name in soak.rss.kib:
            g = soak.rss.growth(name, soak.load_s)
            if g is None or name == "load generator":
                continue
            figure, note = f"soak RSS growth: {name}", f"{g[0] / 1024:,.0f} -> {g[1] / 1024:,.0f} MB"
            rows.append(at_most("e2e", figure, g[2], "%", TARGET_GROWTH_PCT, note) if name in STAGES
                        else info("e2e", figure, g[2], "%", note))
    if len(phases) > 1:
        last = phases[-1]
        rows.append(check("e2e", "end of run: stored == accepted", last.drain.exact,
                          note=f"{last.drain.stored:,} events in the table"))
    return rows


async def _main(opts: Options) -> list[Row]:
    cores = os.cpu_count() or 1
    run_id = uuid.uuid4().hex[:8]
    prefix, database = f"bench{run_id}_", f"bench{run_id}_e2e"
    print("== e2e benchmark")
    print(f"   {cores} CPU cores shared by the gateway, 1 processor worker, the sink, the Kafka broker, the ClickHouse "
          f"server and this load generator; kafka {opts.kafka}, topic prefix {prefix}, database {database}")
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="eventpipe-bench-") as tmp:
        env = stack_env(opts.kafka, Path(tmp) / "home", prefix, clickhouse_url=f"{opts.clickhouse}/{database}")
        settings = _settings(env)
        stages: dict[str, Stage] = {}
        db: Database | None = None
        try:
            team = await create_team(settings, "bench-e2e")
            bodies = Bodies.build(team.api_key)
            print(f"   team {team.team_id}; {len(bodies.plain)} prebuilt /batch/ bodies of {BATCH_SIZE} events "
                  f"({statistics.mean(map(len, bodies.plain)):,.0f} B avg), every event's uuid stamped per request; "
                  f"sink batches {settings.sink_batch_rows:,} rows or {settings.sink_batch_seconds:g} s")
            for name in ("sink", "processors", "gateway"):
                stages[name] = Stage(name, env, settings.home)
            print(f"   stack ready in {await wait_ready(settings, list(stages.values())):.1f} s "
                  f"(gateway :{settings.port}, pids " + ", ".join(f"{n} {s.pid}" for n, s in stages.items()) + ")")
            db = Database(settings.store)
            connector = aiohttp.TCPConnector(limit=opts.connections, limit_per_host=opts.connections)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
                load = Load(session, f"http://127.0.0.1:{settings.port}/batch/", bodies)
                phases = await run_phases(opts, Rig(settings, team.team_id, stages, load, db))
        finally:
            for name in ("gateway", "processors", "sink"):  # pipeline order, as eventpipe run stops them
                stop_stage(stages.get(name))
            if db is not None:
                db.close()
            await delete_kafka_state(opts.kafka, prefix)
            try:
                _drop_databases(StoreURL.parse(opts.clickhouse), [database])
                print(f"   dropped database {database}")
            except Exception as exc:  # cleanup must not hide the figures
                print(f"   could not drop database {database}: {exc!r}")
    rows = figures(phases)
    if rows:
        print("== e2e summary (the whole stack on this machine; never asserted)")
        print_table(table(rows), left=2)
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    quiet_kafka_logs()
    return run_async(_main(Options.from_args(args)))
