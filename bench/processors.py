"""Processors throughput: the real workers against a bare aiokafka consume -> produce loop (the ceiling).

Every phase reads ``--processor-events`` gateway-made raw events of ONE team (``RawEvent.to_json`` of
posthog-js-like events through :func:`gateway.events.parse_events`, the team stamped in with
:func:`eventpipe.contract.stamp_team` as the gateway does, key ``team_id:distinct_id``), preloaded into
``<prefix>events_raw``. Mostly plain events over ``--distinct-ids`` anonymous users; one user in
:data:`IDENTIFY_USERS` identifies half-way through its events (an ``$identify`` with ``$anon_distinct_id``
and ``$set``: a merge through the team's merge lane) and sends its later events as the identified id.

1. ``in-process`` — :func:`processors.protocol.on_raw` / :func:`~processors.protocol.on_inbox` over a dict
   state in this process: the protocol's own cost per event, no Kafka, no Faust.
2. ``raw passthrough`` — one aiokafka consumer (``getmany`` batches of ``processors.app.BATCH``) and the
   producer :func:`eventpipe.kafka.producer` builds: every message sent unchanged to another topic, the
   batch's acks awaited, the offsets committed. The ceiling of one consume -> produce loop.
3. ``processors, W workers`` — W ``python -m eventpipe.cli processors`` subprocesses (one Faust worker
   each, the one agent over events_raw and identity_inbox), on their own copy of the preloaded topic
   (fresh consumer group, table and inbox), timed from the moment the group is Stable with all W members
   holding partitions and output has started, to the N-th row in ``<prefix>clickhouse_events``. Every
   worker's share comes from the group's assignment (``DescribeGroups``) and committed offsets; its CPU
   from ``/proc``.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import math
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ujson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.group import MemberAssignment

from bench.common import (
    CpuMeter,
    Progress,
    Stage,
    TopicCounter,
    cpu_line,
    delete_kafka_state,
    preload,
    print_profile,
    print_table,
    quiet_kafka_logs,
    run_async,
    stop_stage,
    topic_counts,
)
from bench.gateway import CpuSample, _broker_pid, _env_int, _event, _iso, _ratio, _settings
from bench.summary import Row, ratio_row
from eventpipe import config
from eventpipe.contract import RawEvent, Topics, stamp_team
from eventpipe.kafka import create_team, ensure_topics, producer, topics_for
from gateway.events import RequestContext, parse_events
from processors import protocol
from processors.app import BATCH

TARGET = 0.5  # the project's goal for processors ÷ raw passthrough, per worker
PASSTHROUGH_RUNS = 3  # the ceiling is the best of these (the broker's throughput varies run to run)
IDENTIFY_USERS = 20  # one user in this many identifies ($identify with $anon_distinct_id and $set)
POLL_S = 0.05


# ----------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processors benchmark")
    g.add_argument(
        "--processor-events",
        type=int,
        default=_env_int("BENCH_PROCESSOR_EVENTS", 40_000),
        help="raw events preloaded for every phase (env BENCH_PROCESSOR_EVENTS, default 40000)",
    )
    g.add_argument(
        "--distinct-ids",
        type=int,
        default=_env_int("BENCH_DISTINCT_IDS", 2_000),
        help="distinct users of the events (processors) and rows (sink) (env BENCH_DISTINCT_IDS, default 2000)",
    )
    g.add_argument(
        "--processor-workers",
        default=os.environ.get("BENCH_PROCESSOR_WORKERS", "1,2"),
        help="worker counts to measure, one phase each (env BENCH_PROCESSOR_WORKERS, default 1,2)",
    )
    g.add_argument(
        "--processors-profile",
        metavar="FILE",
        help="run the first phase's first worker under cProfile, write the stats to FILE and print the top "
        "functions (profiling slows it: its figures are then not comparable)",
    )


@dataclasses.dataclass(frozen=True)
class Options:
    events: int
    distinct_ids: int
    workers: tuple[int, ...]
    kafka: str
    profile: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        workers = tuple(sorted({max(1, int(w)) for w in str(args.processor_workers).split(",") if w.strip()}))
        return cls(
            events=max(BATCH, args.processor_events),
            distinct_ids=max(1, args.distinct_ids),
            workers=workers or (1,),
            kafka=args.kafka,
            profile=Path(args.processors_profile).resolve() if args.processors_profile else None,
        )


# ---------------------------------------------------------------------------------------- payloads


def _posthog_js_event(i: int, base: datetime, users: int, per_user: int) -> dict[str, Any]:
    """The gateway benchmark's posthog-js-like event, the ``i // users``-th of user ``i % users``.

    A user is anonymous (distinct id ``anon-<uuid>``, as posthog-js mints it); its first event carries
    ``$set_once`` initial properties. One user in IDENTIFY_USERS identifies half-way through its events:
    that event is an ``$identify`` as the identified id with ``$anon_distinct_id`` and ``$set`` (the
    processors merge the two ids through the team's merge lane), and its later events use that id."""
    event = _event(i, base)
    user, nth = i % users, i // users
    props = event["properties"]
    anon = str(uuid.UUID(int=user + 10**6))
    event["distinct_id"] = f"anon-{anon}"
    props["$device_id"] = anon
    props["$session_id"] = str(uuid.UUID(int=user + 2 * 10**6))
    props["$window_id"] = str(uuid.UUID(int=user + 3 * 10**6))
    props["plan"] = ("free", "pro", "enterprise")[user % 3]
    if nth == 0:
        props["$set_once"] = {
            "$initial_referrer": props["$referrer"],
            "$initial_referring_domain": props["$referring_domain"],
            "$initial_current_url": props["$current_url"],
            "$initial_utm_source": "mail",
        }
    identify_at = per_user // 2
    if user % IDENTIFY_USERS == IDENTIFY_USERS - 1 and identify_at >= 1 and nth >= identify_at:
        event["distinct_id"] = f"user-{user:05d}"
        if nth == identify_at:
            event["event"] = "$identify"
            props["$anon_distinct_id"] = f"anon-{anon}"
            props["$set"] = {"email": f"user{user}@example.com", "name": f"User {user}", "plan": props["plan"]}
    return event


def build_messages(token: str, team_id: int, n: int, users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) exactly as the gateway produces them: parse_events in 100-event batches, then the
    team stamped in (``stamp_team``, key ``team_id:distinct_id``)."""
    now = datetime.now(UTC)
    base = now - timedelta(minutes=30)
    ctx = RequestContext(now=now, ip="127.0.0.1", site_url="http://127.0.0.1", route="batch")
    per_user = math.ceil(n / users)
    messages: list[tuple[bytes, bytes]] = []
    for start in range(0, n, 100):
        batch = [_posthog_js_event(i, base, users, per_user) for i in range(start, min(n, start + 100))]
        messages += gateway_messages(batch, token, team_id, ctx)
    return messages


def gateway_messages(
    batch: list[dict[str, Any]], token: str, team_id: int, ctx: RequestContext
) -> list[tuple[bytes, bytes]]:
    """One ``/batch/`` body's events as the gateway publishes them: parsed, then the team stamped in."""
    _, raws = parse_events({"api_key": token, "sent_at": _iso(ctx.now), "batch": batch}, ctx)
    return [stamp_team(r.key(), r.to_json(), token, team_id) for r in raws]


# ------------------------------------------------------------------------------- in-process protocol


@dataclasses.dataclass
class WorkCost:
    us_per_event: float
    events: int
    inbox_messages: int
    rows: int
    writes: int


def work_cost(messages: Sequence[tuple[bytes, bytes]], partitions: int) -> WorkCost:
    """CPU µs per event of what a worker does per message whatever the framework, in this process: the
    raw event decoded once (``RawEvent.from_json``), :func:`protocol.on_raw` over a dict state (fresh:
    every person gets created), every inbox message it sends (merges, forwards, the lane's answers)
    encoded, decoded and handled by :func:`protocol.on_inbox` at its partition, every row and state write
    JSON-encoded (the output topics and the table's changelog). The gap to the workers' CPU µs/event is
    the cost of Faust, the table, the Kafka clients and the inbox's round trip through the broker."""
    state: dict[str, Any] = {}
    partitioner = DefaultPartitioner()
    all_partitions = list(range(partitions))
    inbox: collections.deque[tuple[bytes, bytes]] = collections.deque()
    sent = rows = writes = 0

    def apply(step: protocol.Step) -> None:
        nonlocal sent, rows, writes
        for kind_rows in step.rows.values():
            for row in kind_rows:
                ujson.dumps(row, ensure_ascii=False).encode()
                rows += 1
        for key, message in step.sends:
            inbox.append((key, ujson.dumps(message, ensure_ascii=False).encode()))
            sent += 1
        items = [(step.wal, step.to_json())] if step.wal else []
        for key, value in [*items, *step.writes.items()]:
            ujson.dumps(value, ensure_ascii=False).encode()  # the changelog record
            state[key] = value
            writes += 1

    started = time.process_time()
    clock = time.time_ns() // 1000
    for count, (key, value) in enumerate(messages, 1):
        if count % BATCH == 0:
            clock = time.time_ns() // 1000
        raw = RawEvent.from_json(value)
        apply(protocol.on_raw(state, partitioner(key, all_partitions, all_partitions), raw, clock))
        while inbox:
            inbox_key, body = inbox.popleft()
            part = partitioner(inbox_key, all_partitions, all_partitions)
            apply(protocol.on_inbox(state, part, ujson.loads(body), clock))
    spent = time.process_time() - started
    return WorkCost(spent / len(messages) * 1e6, len(messages), sent, rows, writes)


# ------------------------------------------------------------------------------------- passthrough


@dataclasses.dataclass
class Passthrough:
    name: str
    progress: Progress
    cpu: dict[str, float]

    def print(self) -> None:
        p = self.progress
        print(f"  {self.name}: {p.rate:,.0f} events/s ({p.measured:,} events in {p.seconds:.2f} s, first acked "
              f"batch -> last; {p.first_count:,} before the clock started)")
        print(f"    {cpu_line(self.cpu, p.seconds, p.measured)}")

    @property
    def cpu_s(self) -> float | None:
        return self.cpu.get("bench")


async def passthrough(settings: config.Settings, source: str, target: str, group: str, n: int, run: int) -> Passthrough:
    """Consume ``source`` from the start in getmany batches, send each message to ``target``, await the
    batch's acks, commit; timed from the first batch acked to the last (like the processors' phases)."""
    meter = CpuMeter()
    meter.pids = {"bench": os.getpid(), "broker": _broker_pid()}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    prod = producer(settings, linger_ms=5)  # the processors' edge producer
    await consumer.start()
    await prod.start()
    try:
        tps = [TopicPartition(source, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        progress = Progress(n, time.perf_counter())
        first_sample = None
        done = 0
        while done < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            futures = []
            for tp_messages in batches.values():
                for m in tp_messages:
                    futures.append(await prod.send(target, m.value, key=m.key))
            if not futures:
                continue
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
            if progress.first_at is None:
                progress.first_at, progress.first_count = time.perf_counter(), done
                first_sample = meter.sample()
        progress.done_at, progress.final_count = time.perf_counter(), done
        assert first_sample is not None
        return Passthrough(f"raw passthrough (run {run}/{PASSTHROUGH_RUNS})", progress,
                           CpuMeter.usage(first_sample, meter.sample()))
    finally:
        await prod.stop()
        await consumer.stop()


# ---------------------------------------------------------------------------------------- workers


@dataclasses.dataclass
class Worker:
    """One ``eventpipe processor`` subprocess and its share of the measured window."""

    number: int
    stage: Stage
    raw_partitions: list[int] = dataclasses.field(default_factory=list)
    inbox_partitions: list[int] = dataclasses.field(default_factory=list)
    events: float = 0.0  # raw events it consumed in the window (committed offsets, scaled to the rows)
    done_at: float | None = None  # when its events_raw partitions were all committed
    cpu_s: float | None = None  # CPU seconds it used in the window
    assignments: int = 0  # "Setting newly assigned partitions" in its log: 1 = no rebalance after its join

    @property
    def name(self) -> str:
        return f"worker {self.number}"


@dataclasses.dataclass
class WorkersPhase:
    workers: list[Worker]
    progress: Progress
    cpu: dict[str, float]
    stable_at: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        n = len(self.workers)
        return f"processors, {n} worker{'s' if n > 1 else ''}"

    def worker_seconds(self, w: Worker) -> float:
        """From the clock's start to when the worker's last partition was committed (≤ the phase's end)."""
        p = self.progress
        end = min(w.done_at, p.done_at) if w.done_at and p.done_at else p.done_at
        return (end or 0.0) - (p.first_at or 0.0)

    def worker_rate(self, w: Worker) -> float:
        seconds = self.worker_seconds(w)
        return w.events / seconds if seconds > 0 else 0.0

    def print(self) -> None:
        p = self.progress
        print(f"  {self.name}: {p.rate:,.0f} events/s in all ({p.measured:,} events in {p.seconds:.2f} s, from the "
              f"group Stable with its first rows to the last row; {p.first_count:,} rows before the clock started)")
        print(f"    {cpu_line(self.cpu, p.seconds, p.measured)}")
        for w in self.workers:
            cpu = (f", CPU {w.cpu_s / p.seconds:.0%} of a core, {w.cpu_s / w.events * 1e6:.0f} µs/event"
                   if w.cpu_s is not None and w.events and p.seconds > 0 else "")
            print(f"    {w.name} (pid {w.stage.pid}): events_raw partitions {w.raw_partitions or '-'}, "
                  f"{w.events:,.0f} events in the window, {self.worker_rate(w):,.0f} events/s over "
                  f"{self.worker_seconds(w):.2f} s{cpu}")
        for note in self.notes:
            print(f"    {note}")


async def describe_group(admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[dict[str, list[int]]]]:
    """(state, each member's assignment topic -> partitions) from DescribeGroups."""
    [described] = (await admin.describe_consumer_groups([group]))[0].to_object()["groups"]
    members = []
    for m in described["members"]:
        raw = m["member_assignment"]
        assignment = MemberAssignment.decode(raw) if raw else None
        members.append({t: sorted(ps) for t, ps in assignment.assignment} if assignment else {})
    return str(described["state"]), members


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: max(0, o.offset) for tp, o in offsets.items() if tp.topic == topic}


_ASSIGNED = "Setting newly assigned partitions"


def logged_assignment(log: str, topic: str) -> tuple[int, list[int]]:
    """(assignments in a worker's log, events_raw partitions of the last): Faust logs a table per assignment."""
    blocks = log.split(_ASSIGNED)
    if len(blocks) < 2:
        return 0, []
    table = blocks[-1].split("for group", 1)[0]
    match = re.search(rf"\|\s*{re.escape(topic)}\s*\|\s*\{{([0-9, -]*)\}}\s*\|", table)
    partitions: list[int] = []
    for item in match.group(1).split(",") if match else []:
        low, _, high = item.strip().partition("-")  # Faust writes runs as ranges: {0-3}, {1, 3}
        partitions += range(int(low), int(high or low) + 1)
    return len(blocks) - 1, sorted(partitions)


def spawn_workers(env: dict[str, str], home: Path, k: int, profile: Path | None) -> list[Stage]:
    """``k`` worker subprocesses, each with its own EVENTPIPE_HOME (its log, ready marker, Faust datadir)."""
    stages = []
    for i in range(1, k + 1):
        worker_home = home / f"worker{i}"
        stages.append(Stage("processors", {**env, "EVENTPIPE_HOME": str(worker_home)}, worker_home,
                            profile if i == 1 else None))
    return stages


async def workers_phase(settings: config.Settings, stages: list[Stage], team_id: int, n: int) -> WorkersPhase:
    topics = topics_for(settings)
    group = topics.group("processors")
    parts = range(settings.partitions)
    k = len(stages)
    workers = [Worker(i, stage) for i, stage in enumerate(stages, 1)]
    spawned = min(w.stage.started for w in workers)
    meter = CpuMeter()
    meter.pids = {"bench": os.getpid(), **{w.name: w.stage.pid for w in workers}, "broker": _broker_pid()}
    progress = Progress(n, spawned)
    timeout_s = 90 + n / 200 * k
    stall_s = 30.0
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    first: CpuSample | None = None
    last: CpuSample | None = None
    start_committed: dict[int, int] = {}
    stable_at = None
    notes: list[str] = []
    try:
        async with TopicCounter(settings.kafka_bootstrap) as counter:
            raw_end = await counter.consumer.end_offsets([TopicPartition(topics.raw_events, p) for p in parts])
            end = {tp.partition: offset for tp, offset in raw_end.items()}
            members: list[dict[str, list[int]]] = []
            deadline = spawned + timeout_s
            last_n, last_change, polls = -1, time.perf_counter(), 0
            while True:
                for w in workers:
                    w.stage.check_alive()
                rows = await counter.count(topics.events, settings.partitions)
                now = time.perf_counter()
                polls += 1
                if rows != last_n:
                    last_n, last_change = rows, now
                elif progress.first_at is not None and now - last_change > stall_s:
                    raise RuntimeError(f"processors stalled at {rows:,} of {n:,} rows; last log:\n"
                                       f"{workers[-1].stage.tail()}")
                if progress.first_at is None:
                    state, members = await describe_group(admin, group)
                    if state == "Stable" and len(members) == k and all(m.get(topics.raw_events) for m in members):
                        stable_at = stable_at or now
                        if rows:
                            start_committed = await committed(admin, group, topics.raw_events)
                            progress.first_at, progress.first_count = now, rows
                            first = meter.sample()
                elif progress.done_at is None and polls % 4 == 0:
                    done = await committed(admin, group, topics.raw_events)
                    _mark_done(workers, done, end, now)
                if progress.first_at is not None and rows >= n:
                    progress.done_at, progress.final_count = now, rows
                    last = meter.sample()
                    break
                if now > deadline:
                    raise RuntimeError(f"processors: {rows:,} of {n:,} rows after {timeout_s:.0f} s; last log:\n"
                                       f"{workers[-1].stage.tail()}")
                await asyncio.sleep(POLL_S)

            # After the clock: the last commits (every 0.2 s), the final assignment, per-worker shares.
            settle = time.perf_counter() + 10
            while time.perf_counter() < settle:
                done = await committed(admin, group, topics.raw_events)
                _mark_done(workers, done, end, time.perf_counter())
                if all(done.get(p, 0) >= end[p] for p in parts):
                    break
                await asyncio.sleep(0.1)
            else:
                notes.append("not every raw event was committed 10 s after the last row")
            state, final_members = await describe_group(admin, group)
            inbox_end = await counter.consumer.end_offsets(
                [TopicPartition(topics.identity_inbox, p) for p in parts])
            inbox = {tp.partition: offset for tp, offset in inbox_end.items()}
    finally:
        await admin.close()

    for w in workers:
        w.assignments, w.raw_partitions = logged_assignment(w.stage.tail(10**7), topics.raw_events)
    by_raw = {tuple(m.get(topics.raw_events, [])): m for m in final_members}
    for w in workers:
        member = by_raw.get(tuple(w.raw_partitions))
        if member is None:
            notes.append(f"{w.name}'s logged assignment {w.raw_partitions} is not one of the group's "
                         f"({[m.get(topics.raw_events) for m in final_members]})")
            continue
        w.inbox_partitions = member.get(topics.identity_inbox, [])
    if members != final_members:
        notes.append("the group's assignment changed during the window (a rebalance): figures are disturbed")
    # Raw events each worker consumed in the window: its partitions' ends minus what was committed when
    # the clock started. Commits lag up to 0.2 s, so the shares are scaled to the rows actually measured.
    consumed = {w.number: sum(end[p] - start_committed.get(p, 0) for p in w.raw_partitions) for w in workers}
    total = sum(consumed.values())
    usage = CpuMeter.usage(first, last) if first and last else {}
    for w in workers:
        w.events = progress.measured * consumed[w.number] / total if total else 0.0
        w.cpu_s = usage.pop(w.name, None)
    phase = WorkersPhase(workers, progress, usage, stable_at, notes)
    lane = _partition(protocol.lane_key(team_id), settings.partitions)
    inbox_by = ", ".join(f"{w.name} {sum(inbox.get(p, 0) for p in w.inbox_partitions):,}" for w in workers)
    notes.append(f"group {state} with {len(final_members)} members; identity_inbox messages read (whole phase): "
                 f"{inbox_by} (the team's merge lane is on partition {lane})")
    if any(w.assignments > 1 for w in workers):
        notes.append("assignments per worker (its log): " + ", ".join(f"{w.name} {w.assignments}" for w in workers)
                     + " (more than one: it joined before the others and was rebalanced before the clock started)")
    if stable_at is not None and progress.first_at is not None:
        notes.append(f"start-up: group Stable with {k} members {stable_at - spawned:.1f} s after spawn, the clock "
                     f"started {progress.first_at - spawned:.1f} s after spawn (not in the figures)")
    return phase


def _partition(key: bytes, partitions: int) -> int:
    everything = list(range(partitions))
    return int(DefaultPartitioner()(key, everything, everything))


def _mark_done(workers: list[Worker], done: dict[int, int], end: dict[int, int], now: float) -> None:
    for w in workers:
        if w.done_at is None and w.raw_partitions and all(done.get(p, 0) >= end[p] for p in w.raw_partitions):
            w.done_at = now


# ---------------------------------------------------------------------------------------------- main


async def _main(opts: Options) -> list[Row]:
    cores = os.cpu_count() or 1
    base = f"bench{uuid.uuid4().hex[:8]}_"
    print("== processors benchmark")
    print(
        f"   {cores} CPU cores shared by the processors (one Faust worker = one process, one event loop), this "
        f"process and the local Kafka broker; kafka {opts.kafka}, topic prefix {base}"
    )
    passthroughs: list[Passthrough] = []
    phases: dict[int, WorkersPhase] = {}
    work: WorkCost | None = None
    with tempfile.TemporaryDirectory(prefix="eventpipe-bench-") as tmp:
        env = {**os.environ, "EVENTPIPE_KAFKA_BOOTSTRAP": opts.kafka}

        def phase_env(name: str) -> dict[str, str]:
            return {**env, "EVENTPIPE_HOME": str(Path(tmp) / name), "EVENTPIPE_TOPIC_PREFIX": f"{base}{name}_"}

        first_env = phase_env("pt")
        first = _settings(first_env)
        stages: list[Stage] = []
        try:
            team = await create_team(first, "bench")  # also creates the project's topics
            started = time.perf_counter()
            messages = build_messages(team.api_key, team.team_id, opts.events, opts.distinct_ids)
            sizes = [len(v) for _, v in messages]
            ids = len({k for k, _ in messages})
            identifies = sum(b'"event":"$identify"' in v for _, v in messages)
            print(
                f"   {len(messages):,} raw events of team {team.team_id} built through parse_events + stamp_team in "
                f"{time.perf_counter() - started:.1f} s: {statistics.mean(sizes):,.0f} B avg, {ids:,} distinct ids "
                f"({opts.distinct_ids:,} anonymous users, one in {IDENTIFY_USERS} identifies: {identifies:,} "
                f"$identify merges with $set)"
            )
            work = work_cost(messages, first.partitions)
            print(
                f"-- in-process: RawEvent.from_json + protocol.on_raw over a dict state (+ on_inbox for the "
                f"{work.inbox_messages:,} inbox messages it sends, rows' and writes' JSON): {work.us_per_event:.0f} "
                f"µs CPU/event = {1e6 / work.us_per_event:,.0f} events/s on one core ({work.rows / work.events:.2f} "
                f"rows, {work.writes / work.events:.2f} state writes per event)"
            )

            async def preloaded(s: config.Settings) -> Topics:
                await ensure_topics(s)
                t = topics_for(s)
                prod = producer(s)
                await prod.start()
                try:
                    seconds = await preload(prod, t.raw_events, messages)
                finally:
                    await prod.stop()
                print(f"   preloaded {t.raw_events} in {seconds:.1f} s ({len(messages) / seconds:,.0f} msg/s)")
                return t

            topics = await preloaded(first)
            print(
                f"-- raw ceiling: bare aiokafka consume -> produce passthrough (getmany <= {BATCH}, send, await "
                f"the batch's acks, commit), same topic and messages"
            )
            out = f"{first.topic_prefix}passthrough"
            await ensure_topics(first, [NewTopic(out, first.partitions, 1)])
            for run in range(1, PASSTHROUGH_RUNS + 1):
                passthroughs.append(await passthrough(
                    first, topics.raw_events, out, f"{first.topic_prefix}passthrough{run}", len(messages), run
                ))
                passthroughs[-1].print()

            profile = opts.profile
            for k in opts.workers:
                name = f"w{k}"
                phase_environment = phase_env(name)
                settings = _settings(phase_environment)
                print(f"-- processors, {k} worker{'s' if k > 1 else ''}: {k} x python -m eventpipe.cli processors "
                      f"on a fresh copy of the same events ({settings.topic_prefix}*, fresh group, table and inbox)")
                await preloaded(settings)
                if profile:
                    print(f"   (worker 1 under cProfile -> {profile}: its figures are slowed by the profiler)")
                workers = spawn_workers(phase_environment, Path(tmp) / name, k, profile)
                stages += workers
                phase = await workers_phase(settings, workers, team.team_id, len(messages))
                phases[k] = phase
                phase.print()
                t = topics_for(settings)
                counts = await topic_counts(
                    opts.kafka,
                    [t.events, t.persons, t.person_distinct_ids, t.person_distinct_id_overrides, t.ingestion_warnings,
                     t.dead_letters, t.identity_inbox],
                    settings.partitions,
                )
                print("    output: " + ", ".join(f"{x.removeprefix(settings.topic_prefix)} {c:,}"
                                                  for x, c in counts.items()))
                extra = counts[t.events] - len(messages)
                if extra > 0:
                    print(f"    ({extra:,} more event rows than events: at-least-once redeliveries)")
                for w in phase.workers:  # stop them now: the next phase must not share the CPUs with them
                    stop_stage(w.stage)
                profile = None
        finally:
            for stage in stages:
                if stage.proc.poll() is None:
                    stop_stage(stage)
            await delete_kafka_state(opts.kafka, base)

    if not passthroughs or not phases:
        return []
    raw = max(passthroughs, key=lambda r: r.progress.rate)
    _summary(raw, phases, work, cores)
    print_profile(opts.profile, "processors (worker 1 of the first phase)")
    return figures(raw, phases)


def figures(raw: Passthrough, phases: dict[int, WorkersPhase]) -> list[Row]:
    """Headline rows for the one table of ``python -m bench``: per phase, its slowest worker ÷ the passthrough."""
    rows = []
    for k, phase in phases.items():
        rate = min(phase.worker_rate(w) for w in phase.workers)
        figure = "events/s per worker" + (f" ({k} workers, the slowest)" if k > 1 else " (1 worker)")
        rows.append(ratio_row("processors", figure, rate, raw.progress.rate, "events/s", TARGET))
    return rows


def _summary(raw: Passthrough, phases: dict[int, WorkersPhase], work: WorkCost | None, cores: int) -> None:
    print(f"== summary (events/s per worker ÷ raw passthrough, target ≥ {TARGET}; CPU of each process from /proc)")
    ceiling = raw.progress.rate
    rows = [("phase", "events/s", "÷ raw", "CPU of its process", "µs CPU/event")]
    spent = raw.cpu_s
    rows.append((
        f"raw passthrough (best of {PASSTHROUGH_RUNS})", f"{ceiling:,.0f}", "1.00",
        f"{spent / raw.progress.seconds:.0%} of a core" if spent is not None else "-",
        f"{spent / raw.progress.measured * 1e6:.0f}" if spent is not None else "-",
    ))
    if work is not None:
        rows.append(("in-process protocol (no Kafka, no Faust)", f"{1e6 / work.us_per_event:,.0f}",
                     _ratio(1e6 / work.us_per_event, ceiling), "100% of a core", f"{work.us_per_event:.0f}"))
    verdicts = []
    for k, phase in phases.items():
        p = phase.progress
        if k > 1:
            rows.append((f"{phase.name}, all", f"{p.rate:,.0f}", _ratio(p.rate, ceiling), "-", "-"))
        for w in phase.workers:
            rate = phase.worker_rate(w)
            label = f"{phase.name}: {w.name}" if k > 1 else phase.name
            rows.append((
                label, f"{rate:,.0f}", _ratio(rate, ceiling),
                f"{w.cpu_s / p.seconds:.0%} of a core" if w.cpu_s is not None and p.seconds > 0 else "-",
                f"{w.cpu_s / w.events * 1e6:.0f}" if w.cpu_s is not None and w.events else "-",
            ))
            ratio = rate / ceiling if ceiling else 0.0
            verdicts.append(f"{label} {ratio:.2f} ({'meets' if ratio >= TARGET else 'below'})")
    print_table(rows)
    print(f"   per worker ÷ raw: {'; '.join(verdicts)}; target {TARGET}, figures vary ±15% run to run")
    print(
        f"   note: a worker is one process with one event loop (at most one of the {cores} cores); the passthrough "
        "is one consume -> produce loop with no work, the workers do one hop per event (events_raw -> rows) plus "
        "the inbox's for merges and the events of merged ids. With more workers than cores minus the broker, "
        "the workers share CPUs: compare their CPU µs/event rather than their events/s."
    )


def run(args: argparse.Namespace) -> list[Row]:
    quiet_kafka_logs()
    return run_async(_main(Options.from_args(args)))
