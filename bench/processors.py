"""Processors throughput: a bare aiokafka consume -> produce loop (the ceiling) against the real stage.

Both phases read the same preloaded topic, ``<prefix>events_raw``: ``--processor-events`` gateway-made
messages (``RawEvent.to_json`` of posthog-js-like events, key ``RawEvent.key()``, ``--distinct-ids``
users of one team created with :func:`eventpipe.kafka.create_team`).

1. ``raw passthrough`` — one aiokafka consumer (``getmany`` batches of ``processors.app.BATCH``) and the
   producer :func:`eventpipe.kafka.producer` builds: every message is sent unchanged to another topic,
   the batch's acks are awaited, then the offsets committed: a consume -> produce loop with no
   framework and no work, over one hop.
2. ``processors`` — ``python -m eventpipe.cli processors`` as a subprocess, timed from the first row in
   ``<prefix>clickhouse_events`` to the N-th (start-up excluded). It does two hops (``route``:
   events_raw -> events_by_team, ``persons``: events_by_team -> clickhouse_events + person rows).

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ujson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import (
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
    stage_meter,
    stop_stage,
    topic_counts,
    watch,
)
from bench.gateway import CpuMeter, _env_int, _event, _iso, _ratio, _settings
from eventpipe import config
from eventpipe.contract import RawEvent
from eventpipe.kafka import create_team, ensure_topics, producer, topics_for
from gateway.events import RequestContext, parse_events
from processors.app import BATCH
from processors.identity import State
from processors.transform import process_with_persons

TARGET = 0.5  # the project's goal for processors ÷ raw passthrough
PASSTHROUGH_RUNS = 3  # the ceiling is the best of these (the broker's throughput varies run to run)
IDENTIFY_EVERY = 50  # one event in this many is an $identify with $set (person properties change)


# ----------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processors benchmark")
    g.add_argument(
        "--processor-events",
        type=int,
        default=_env_int("BENCH_PROCESSOR_EVENTS", 40_000),
        help="raw events preloaded for both phases (env BENCH_PROCESSOR_EVENTS, default 40000)",
    )
    g.add_argument(
        "--distinct-ids",
        type=int,
        default=_env_int("BENCH_DISTINCT_IDS", 2_000),
        help="distinct users of the events (processors) and rows (sink) (env BENCH_DISTINCT_IDS, default 2000)",
    )
    g.add_argument(
        "--processors-profile",
        metavar="FILE",
        help="run the processors under cProfile, write the stats to FILE and print the top functions "
        "(profiling slows them: their figures are then not comparable)",
    )


@dataclasses.dataclass(frozen=True)
class Options:
    events: int
    distinct_ids: int
    kafka: str
    profile: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(
            events=max(BATCH, args.processor_events),
            distinct_ids=max(1, args.distinct_ids),
            kafka=args.kafka,
            profile=Path(args.processors_profile).resolve() if args.processors_profile else None,
        )


# ---------------------------------------------------------------------------------------- payloads


def _posthog_js_event(i: int, base: datetime, users: int) -> dict[str, Any]:
    """The gateway benchmark's posthog-js-like event, for one of ``users`` users; each user's first
    event carries ``$set_once`` initial properties and one event in IDENTIFY_EVERY is an ``$identify``
    with ``$set`` (so the processors create every person and update some)."""
    event = _event(i, base)
    user = i % users
    props = event["properties"]
    event["distinct_id"] = f"user-{user:05d}"
    props["$device_id"] = str(uuid.UUID(int=user + 10**6))
    props["$session_id"] = str(uuid.UUID(int=user + 2 * 10**6))
    props["$window_id"] = str(uuid.UUID(int=user + 3 * 10**6))
    props["plan"] = ("free", "pro", "enterprise")[user % 3]
    if i < users:
        props["$set_once"] = {
            "$initial_referrer": props["$referrer"],
            "$initial_referring_domain": props["$referring_domain"],
            "$initial_current_url": props["$current_url"],
            "$initial_utm_source": "mail",
        }
    if i % IDENTIFY_EVERY == IDENTIFY_EVERY - 1:
        event["event"] = "$identify"
        props["$set"] = {"email": f"user{user}@example.com", "name": f"User {user}", "visits": i // users}
    return event


def build_messages(token: str, n: int, users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) exactly as the gateway produces them, through parse_events in 100-event batches."""
    now = datetime.now(UTC)
    base = now - timedelta(minutes=30)
    ctx = RequestContext(now=now, ip="127.0.0.1", site_url="http://127.0.0.1", route="batch")
    messages: list[tuple[bytes, bytes]] = []
    for start in range(0, n, 100):
        batch = [_posthog_js_event(i, base, users) for i in range(start, min(n, start + 100))]
        _, raws = parse_events({"api_key": token, "sent_at": _iso(now), "batch": batch}, ctx)
        messages += [(r.key(), r.to_json()) for r in raws]
    return messages


def work_cost_us(messages: list[tuple[bytes, bytes]], team_id: int, min_seconds: float = 0.5) -> float:
    """CPU µs per event of the processors' own work without Kafka or Faust: the raw event decoded once
    per hop (``RawEvent.from_json``), :func:`process_with_persons` over an in-memory state (dicts instead
    of the Faust table), every emitted row encoded with ``ujson``. Fresh state: persons get created."""
    state = State(distinct_ids={}, persons={}, groups={})
    events = 0
    started = time.process_time()
    for offset, (_, value) in enumerate(messages):
        RawEvent.from_json(value)  # route
        raw = RawEvent.from_json(value)  # persons
        rows, emitted = process_with_persons(raw, team_id, state, (0, offset, 0))
        for row in (*rows.events, *rows.warnings, *emitted.persons, *emitted.distinct_ids, *emitted.groups):
            ujson.dumps(row, ensure_ascii=False).encode()
        events += 1
        if events % 1000 == 0 and time.process_time() - started >= min_seconds:
            break
    return (time.process_time() - started) / events * 1e6


# ------------------------------------------------------------------------------------------ phases


@dataclasses.dataclass
class Phase:
    name: str
    progress: Progress
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def print(self) -> None:
        p = self.progress
        print(
            f"  {self.name}: {p.rate:,.0f} events/s ({p.measured:,} events in {p.seconds:.2f} s, "
            f"first output row -> last; {p.first_count:,} rows before the clock started)"
        )
        if self.cpu:
            print(f"    {cpu_line(self.cpu, p.seconds, p.measured)}")
        for note in self.notes:
            print(f"    {note}")


async def passthrough(
    settings: config.Settings, meter: CpuMeter, source: str, target: str, group: str, n: int, run: int
) -> Phase:
    """Consume ``source`` from the start in getmany batches, send each message to ``target``, await the
    batch's acks, commit; timed from the first batch acked to the last (like the processors' phase)."""
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
        usage = CpuMeter.usage(first_sample, meter.sample())
        return Phase(f"raw passthrough (run {run}/{PASSTHROUGH_RUNS})", progress, usage)
    finally:
        await prod.stop()
        await consumer.stop()


async def processors_phase(stage: Stage, settings: config.Settings, n: int) -> Phase:
    topics = topics_for(settings)
    meter = stage_meter("processors", stage.pid)
    progress = Progress(n, stage.started)
    ready_file = settings.home / "run" / "processor.ready"
    timeout_s = 90 + n / 200  # start-up, then generous (a stall is caught sooner, see watch)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    ready_at = routed_at = None
    polls = 0

    async def routed() -> int:
        """Raw events the processors committed (hop 1 done with them; Faust commits every 0.2 s)."""
        offsets = await admin.list_consumer_group_offsets(topics.group("processors"))
        return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == topics.raw_events)

    try:
        async with TopicCounter(settings.kafka_bootstrap) as counter:

            async def rows() -> int:
                nonlocal ready_at, routed_at, polls
                polls += 1
                if ready_at is None and ready_file.exists():
                    ready_at = time.perf_counter()
                if ready_at is not None and routed_at is None and polls % 4 == 0 and await routed() >= n:
                    routed_at = time.perf_counter()
                return await counter.count(topics.events, settings.partitions)

            first, last = await watch(progress, rows, stage, meter, timeout_s)
    finally:
        await admin.close()
    phase = Phase("processors", progress, CpuMeter.usage(first, last) if first else {})
    ready = f"group joined (processor.ready) after {ready_at - stage.started:.1f} s, " if ready_at else ""
    phase.notes.append(
        f"start-up: {ready}first row in {topics.events} {progress.startup_s:.1f} s after spawn "
        f"(not in the figure above)"
    )
    if routed_at and progress.first_at and progress.done_at:
        phase.notes.append(
            f"hop 1 (route) had committed all {n:,} raw events {routed_at - progress.first_at:.1f} s after the first "
            f"row, hop 2 (persons) wrote the last row {progress.done_at - progress.first_at:.1f} s after it"
        )
    elif progress.done_at:
        phase.notes.append("hop 1 (route) had not committed every raw event when the last row arrived")
    if ready_at and progress.done_at:
        since_ready = progress.done_at - ready_at
        phase.notes.append(
            f"from group joined to the last row: {n / since_ready:,.0f} events/s over {since_ready:.2f} s "
            f"(includes the first fetch and both hops' latency)"
        )
    return phase


# ---------------------------------------------------------------------------------------------- main


async def _main(opts: Options) -> None:
    cores = os.cpu_count() or 1
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    print("== processors benchmark")
    print(
        f"   {cores} CPU cores shared by the processors (1 Faust worker, 1 event loop), this process and the local"
        f" Kafka broker; kafka {opts.kafka}, topic prefix {prefix}"
    )
    results: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory(prefix="eventpipe-bench-") as tmp:
        env = {
            **os.environ,
            "EVENTPIPE_KAFKA_BOOTSTRAP": opts.kafka,
            "EVENTPIPE_HOME": str(Path(tmp) / "home"),
            "EVENTPIPE_TOPIC_PREFIX": prefix,
        }
        settings = _settings(env)
        topics = topics_for(settings)
        stage: Stage | None = None
        try:
            team = await create_team(settings, "bench")  # also creates the project's topics
            started = time.perf_counter()
            messages = build_messages(team.api_key, opts.events, opts.distinct_ids)
            sizes = [len(v) for _, v in messages]
            print(
                f"   {len(messages):,} raw events built through parse_events in {time.perf_counter() - started:.1f} s:"
                f" {statistics.mean(sizes):,.0f} B avg, {opts.distinct_ids:,} distinct ids of team {team.team_id},"
                f" one in {IDENTIFY_EVERY} an $identify with $set"
            )
            prod = producer(settings)
            await prod.start()
            try:
                seconds = await preload(prod, topics.raw_events, messages)
            finally:
                await prod.stop()
            print(f"   preloaded {topics.raw_events} in {seconds:.1f} s ({len(messages) / seconds:,.0f} msg/s)")
            try:
                work_us = work_cost_us(messages, team.team_id)
                print(
                    f"   processors' pure-Python work in-process (RawEvent.from_json x2 + process_with_persons over "
                    f"dicts + rows' JSON): {work_us:.0f} µs/event (= at most {1e6 / work_us:,.0f} events/s per core)"
                )
            except Exception as exc:  # the transform's API moved: the stage phases still mean something
                print(f"   processors' pure-Python work in-process: not measured ({exc!r})")

            print(
                f"-- raw ceiling: bare aiokafka consume -> produce passthrough (getmany <= {BATCH}, send, await "
                f"the batch's acks, commit), same topic and messages"
            )
            out = f"{prefix}passthrough"
            await ensure_topics(settings, [NewTopic(out, settings.partitions, 1)])
            meter = stage_meter("processors")
            runs = []
            for run in range(1, PASSTHROUGH_RUNS + 1):
                runs.append(await passthrough(
                    settings, meter, topics.raw_events, out, f"{prefix}passthrough{run}", len(messages), run
                ))
                runs[-1].print()
            best = max(runs, key=lambda r: r.progress.rate)
            results["raw"] = dataclasses.replace(best, name=f"raw passthrough (best of {len(runs)})")

            print("-- processors: python -m eventpipe.cli processors, from the same preloaded topic")
            if opts.profile:
                print(f"   (under cProfile -> {opts.profile}: processors figures are slowed by the profiler)")
            stage = Stage("processors", env, settings.home, opts.profile)
            results["processors"] = await processors_phase(stage, settings, len(messages))
            results["processors"].print()
            counts = await topic_counts(
                opts.kafka,
                [
                    topics.events_by_team, topics.events, topics.persons, topics.person_distinct_ids,
                    topics.ingestion_warnings, topics.dead_letters,
                ],
                settings.partitions,
            )
            print("   output: " + ", ".join(f"{t.removeprefix(prefix)} {c:,}" for t, c in counts.items()))
            extra = counts[topics.events] - len(messages)
            if extra > 0:
                print(f"   ({extra:,} more event rows than events: at-least-once redeliveries)")
        finally:
            stop_stage(stage)
            await delete_kafka_state(opts.kafka, prefix)

    if "raw" in results and "processors" in results:
        raw, proc = results["raw"], results["processors"]
        print("== summary (events/s from the first output row to the last; processors ÷ raw passthrough, target "
              f"≥ {TARGET})")
        rows = [("phase", "events/s", "÷ raw", "CPU of its process", "µs CPU/event")]
        for key, r in (("raw", raw), ("processors", proc)):
            who = "bench" if key == "raw" else "processors"
            spent = r.cpu.get(who)
            rows.append((
                r.name,
                f"{r.progress.rate:,.0f}",
                _ratio(r.progress.rate, raw.progress.rate),
                f"{spent / r.progress.seconds:.0%} of a core" if spent is not None else "-",
                f"{spent / r.progress.measured * 1e6:.0f}" if spent is not None and r.progress.measured else "-",
            ))
        print_table(rows)
        ratio = proc.progress.rate / raw.progress.rate if raw.progress.rate else 0.0
        verdict = "meets" if ratio >= TARGET else "below"
        print(f"   processors ÷ raw = {ratio:.2f} ({verdict} the {TARGET} target; figures vary ±15% run to run)")
        print(
            f"   note: the processors do two consume -> produce hops (events_raw -> events_by_team -> "
            f"clickhouse_events) in one process with one event loop, so it can use at most one of the {cores} cores;"
            f" the passthrough does one hop with no work."
        )
    print_profile(opts.profile, "processors")


def run(args: argparse.Namespace) -> None:
    quiet_kafka_logs()
    run_async(_main(Options.from_args(args)))
