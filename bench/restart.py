"""Restart of a processor worker: is it bounded by the live state, not by the history?

A worker keeps the identity table in memory (``store="memory://"``); on start it rebuilds it from the
table's compacted changelog topic before it processes anything. This bench measures what that costs
after a worst-case history, for each ``--restart-events`` N (one phase each, on its own topics):

1. N gateway-made raw events of ONE team (as :mod:`bench.processors` builds them: ``RawEvent`` JSON through
   :func:`gateway.events.parse_events` + :func:`eventpipe.contract.stamp_team`, key ``team_id:distinct_id``)
   over ``--restart-distinct-ids`` D users, preloaded into ``<prefix>events_raw``. Every event carries a
   ``$set`` that changes its person (``seq``: the user's event number), so every event writes state; one
   user in :data:`bench.processors.IDENTIFY_USERS` identifies half-way (an ``$identify`` merge).
2. One real worker (``python -m eventpipe.cli processors``) runs until the processors group's committed
   offsets on events_raw reach the end offsets: processing rate.
3. SIGTERM (a clean shutdown). The changelog is then measured: its offsets (end - start = every write ever
   made), the records a bare consumer actually reads from it now (what compaction left: what a restart
   replays), its distinct keys (the live state, the most compaction can shrink it to), its configs and, on
   the local broker, its segment files.
4. A new worker with the same settings and the same ``EVENTPIPE_HOME``; right after its spawn, probe events
   for two existing persons (a plain anonymous id and an identified one) are produced. Measured from the
   spawn: its ready file (written by ``on_rebalance_complete``, i.e. after table recovery), "Worker ready"
   in its log, the group Stable with it holding events_raw, and each probe's row on
   ``<prefix>clickhouse_events``, whose ``person_properties.seq`` must be the person's last ``$set`` (the
   state was restored, not started afresh).

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ujson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from bench.common import (
    LOCAL_DIR,
    CpuMeter,
    Progress,
    Stage,
    cpu_line,
    delete_kafka_state,
    preload,
    print_table,
    quiet_kafka_logs,
    run_async,
    stop_stage,
    watch,
)
from bench.gateway import _broker_pid, _env_int, _event, _iso, _settings
from bench.processors import IDENTIFY_USERS, _posthog_js_event, committed, describe_group, gateway_messages
from bench.summary import Row, at_most
from eventpipe import config
from eventpipe.contract import stamp_team
from eventpipe.kafka import create_team, ensure_topics, producer, topics_for
from gateway.events import RequestContext, parse_events

TARGET_S = 30.0  # issue 11 item 5: a restart after 1M events ready and serving within this
TARGET_EVENTS = 1_000_000
EVENTS_PER_ID = 10  # default D = N / this
CHUNK = 20_000  # events built and preloaded at a time (1M messages would hold ~1.5 GB at once)
POLL_S = 0.05
CHANGELOG_CONFIGS = ("cleanup.policy", "segment.ms", "segment.bytes", "min.cleanable.dirty.ratio",
                     "min.compaction.lag.ms", "delete.retention.ms")


# ----------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("restart benchmark")
    g.add_argument(
        "--restart-events",
        default=os.environ.get("BENCH_RESTART_EVENTS", "200000"),
        help="raw events processed before the restart; a comma-separated list runs one phase each, e.g. "
        "200000,1000000 (env BENCH_RESTART_EVENTS, default 200000)",
    )
    g.add_argument(
        "--restart-distinct-ids",
        type=int,
        default=_env_int("BENCH_RESTART_DISTINCT_IDS", 0),
        help=f"distinct users of those events (env BENCH_RESTART_DISTINCT_IDS, default 0: events / {EVENTS_PER_ID}); "
        "fixed, several --restart-events show how restarts grow with history at the same live state",
    )


@dataclasses.dataclass(frozen=True)
class Options:
    events: tuple[int, ...]
    distinct_ids: int
    kafka: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        events = tuple(max(1_000, int(float(n))) for n in str(args.restart_events).split(",") if n.strip())
        return cls(events=events or (200_000,), distinct_ids=max(0, args.restart_distinct_ids), kafka=args.kafka)

    def users(self, n: int) -> int:
        return min(n, self.distinct_ids or max(1, n // EVENTS_PER_ID))


# ---------------------------------------------------------------------------------------- payloads


def _restart_event(i: int, base: datetime, users: int, per_user: int) -> dict[str, Any]:
    """The processors bench's event ``i``, plus a ``$set`` that changes the person on every event."""
    event = _posthog_js_event(i, base, users, per_user)
    props = event["properties"]
    props["$set"] = {**props.get("$set", {}), "seq": i // users, "last_path": props["$pathname"]}
    return event


def message_chunks(token: str, team_id: int, n: int, users: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """(key, value) as the gateway produces them, CHUNK events at a time. Event times end 5 minutes ago
    (7 ms apart, as in the gateway bench), so a long history is not in the future."""
    now = datetime.now(UTC)
    base = now - timedelta(milliseconds=7 * n, minutes=5)
    ctx = RequestContext(now=now, ip="127.0.0.1", site_url="http://127.0.0.1", route="batch")
    per_user = math.ceil(n / users)
    for chunk in range(0, n, CHUNK):
        messages: list[tuple[bytes, bytes]] = []
        for start in range(chunk, min(n, chunk + CHUNK), 100):
            batch = [_restart_event(i, base, users, per_user) for i in range(start, min(n, start + 100))]
            messages += gateway_messages(batch, token, team_id, ctx)
        yield messages


@dataclasses.dataclass
class Probe:
    label: str
    distinct_id: str
    uuid: str
    expected_seq: int
    key: bytes
    value: bytes
    row_at: float | None = None
    seq: Any = None
    person_id: str = ""


def build_probes(token: str, team_id: int, n: int, users: int) -> list[Probe]:
    """One event of user 0 (anonymous) and one of the first identified user (as ``user-N``), without
    ``$set``: their rows must carry the person's last ``seq``, restored from the changelog."""
    per_user = math.ceil(n / users)
    wanted = [("anonymous id", 0)]
    if users >= IDENTIFY_USERS and per_user // 2 >= 1:
        wanted.append(("identified id (merged)", IDENTIFY_USERS - 1))
    now = datetime.now(UTC)
    ctx = RequestContext(now=now, ip="127.0.0.1", site_url="http://127.0.0.1", route="batch")
    probes = []
    for label, user in wanted:
        # The user's last event, rebuilt: its distinct id is the one the person's events ended with.
        last = user + (n - 1 - user) // users * users
        distinct_id = _restart_event(last, now, users, per_user)["distinct_id"]
        event = _event(n + user, now)
        event["event"] = "restart_probe"
        event["distinct_id"] = distinct_id
        [raw] = parse_events({"api_key": token, "sent_at": _iso(now), "batch": [event]}, ctx)[1]
        key, value = stamp_team(raw.key(), raw.to_json(), token, team_id)
        probes.append(Probe(label, distinct_id, raw.uuid, (n - 1 - user) // users, key, value))
    return probes


# --------------------------------------------------------------------------------------- changelog


@dataclasses.dataclass
class Changelog:
    topic: str
    start: dict[int, int]
    end: dict[int, int]
    records: int  # what a consumer reads from the start now (compaction leaves gaps in the offsets)
    keys: int  # distinct keys among them: the live state
    tombstones: int
    read_s: float
    value_bytes: int
    configs: dict[str, str]
    segments: int | None  # on the local broker: .log files of its partitions, and their bytes
    segment_bytes: int | None

    @property
    def offsets(self) -> int:
        return sum(self.end[p] - self.start[p] for p in self.end)

    @property
    def compacted(self) -> int:
        return self.offsets - self.records

    @property
    def start_moved(self) -> bool:
        return any(self.start.values())


async def changelog_topic(admin: AIOKafkaAdminClient, group: str) -> str:
    """The identity table's changelog (Faust: ``<app id>-<table>-changelog``)."""
    name = f"{group}-identity-changelog"
    topics = await admin.list_topics()
    if name in topics:
        return name
    found = [t for t in topics if t.startswith(group) and t.endswith("-changelog")]
    if not found:
        raise RuntimeError(f"no changelog topic {name} (topics of the group: "
                           f"{sorted(t for t in topics if t.startswith(group))})")
    return found[0]


async def topic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    configs = {}
    for resource in response.resources:
        for entry in resource[4]:  # (name, value, read_only, config_source / is_default, is_sensitive, …)
            configs[entry[0]] = entry[1]
    return {k: configs[k] for k in CHANGELOG_CONFIGS if k in configs}


def local_segments(topic: str, partitions: int) -> tuple[int | None, int | None]:
    """(.log segment files, their bytes) of a topic on the local broker of deploy/local/kafka.sh."""
    data = LOCAL_DIR / "kafka" / "data"
    dirs = [data / f"{topic}-{p}" for p in range(partitions)]
    if not all(d.is_dir() for d in dirs):
        return None, None
    logs = [f for d in dirs for f in d.glob("*.log")]
    return len(logs), sum(f.stat().st_size for f in logs)


async def read_changelog(bootstrap: str, admin: AIOKafkaAdminClient, topic: str, partitions: int) -> Changelog:
    """Every record of the changelog from its start to its end now, with a bare consumer."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        start = {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
        end = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        todo = [tp for tp in tps if end[tp.partition] > start[tp.partition]]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        keys: set[bytes] = set()
        records = tombstones = value_bytes = 0
        began = time.perf_counter()
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=10_000)
            for messages in batches.values():
                records += len(messages)
                for m in messages:
                    keys.add(m.key or b"")
                    if m.value is None:
                        tombstones += 1
                    else:
                        value_bytes += len(m.value)
            todo = [tp for tp in todo if await consumer.position(tp) < end[tp.partition]]
        read_s = time.perf_counter() - began
    finally:
        await consumer.stop()
    segments, segment_bytes = local_segments(topic, partitions)
    return Changelog(topic, start, end, records, len(keys), tombstones, read_s, value_bytes,
                     await topic_configs(admin, topic), segments, segment_bytes)


# ------------------------------------------------------------------------------------------ phases


@dataclasses.dataclass
class Restart:
    spawned: float
    probes: list[Probe]
    probes_sent_at: float | None = None
    ready_at: float | None = None  # the new worker's ready file
    logged_ready_at: float | None = None  # "Worker ready" in its log
    stable_at: float | None = None  # group Stable, one member holding events_raw partitions
    cpu_at_ready: float | None = None
    usage: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    unexpected: int = 0  # rows after the restart that are not the probes' (work left over by the first worker)
    spawned_wall: float = 0.0
    marks: dict[str, float] = dataclasses.field(default_factory=dict)  # Faust's log lines, s after the spawn

    def since(self, at: float | None) -> str:
        return f"{at - self.spawned:.1f} s" if at is not None else "-"

    @property
    def first_row_at(self) -> float | None:
        times = [p.row_at for p in self.probes if p.row_at is not None]
        return min(times) if times else None

    @property
    def all_rows_at(self) -> float | None:
        times = [p.row_at for p in self.probes]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)


@dataclasses.dataclass
class Phase:
    events: int
    users: int
    identifies: int
    message_bytes: float
    processing: Progress
    processing_cpu: dict[str, float]
    stop_s: float
    stop_code: int
    first_ready_s: float | None
    changelog: Changelog
    restart: Restart


async def restart_phase(settings: config.Settings, env: dict[str, str], home: Path, admin: AIOKafkaAdminClient,
                        before: Changelog, probes: list[Probe], row_offsets: dict[int, int]) -> Restart:
    topics = topics_for(settings)
    group = topics.group("processors")
    ready_file = home / "run" / "processor.ready"
    worker_log = home / "processors.log"
    timeout_s = 120 + before.records / 2_000
    stage = Stage("processors", env, home)
    restart = Restart(stage.started, probes, spawned_wall=time.time())
    meter = CpuMeter()
    meter.pids = {"bench": os.getpid(), "worker": stage.pid, "broker": _broker_pid()}
    first_sample = meter.sample()
    by_uuid = {p.uuid: p for p in probes}
    prod = producer(settings)
    rows = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None)
    await prod.start()
    await rows.start()
    try:
        await asyncio.gather(*[await prod.send(topics.raw_events, p.value, key=p.key) for p in probes])
        restart.probes_sent_at = time.perf_counter()
        tps = [TopicPartition(topics.events, p) for p in range(settings.partitions)]
        rows.assign(tps)
        for tp in tps:
            rows.seek(tp, row_offsets[tp.partition])
        deadline = stage.started + timeout_s
        while True:
            stage.check_alive()
            now = time.perf_counter()
            if restart.ready_at is None and ready_file.exists() and ready_file.read_text().strip() == str(stage.pid):
                restart.ready_at, restart.cpu_at_ready = now, stage.cpu_s()
                restart.usage = CpuMeter.usage(first_sample, meter.sample())
            if restart.logged_ready_at is None and "Worker ready" in stage.tail(10**6):
                restart.logged_ready_at = now
            if restart.stable_at is None:
                state, members = await describe_group(admin, group)
                if state == "Stable" and len(members) == 1 and members[0].get(topics.raw_events):
                    restart.stable_at = now
            batches = await rows.getmany(timeout_ms=0)
            for messages in batches.values():
                for m in messages:
                    row = ujson.loads(m.value)
                    probe = by_uuid.get(row.get("uuid"))
                    if probe is None:
                        restart.unexpected += 1
                        continue
                    if probe.row_at is None:
                        probe.row_at = time.perf_counter()
                        probe.seq = ujson.loads(row.get("person_properties") or "{}").get("seq")
                        probe.person_id = row.get("person_id", "")
            if None not in (restart.ready_at, restart.logged_ready_at, restart.stable_at, restart.all_rows_at):
                break
            if now > deadline:
                restart.notes.append(f"gave up {timeout_s:.0f} s after the spawn; last log:\n{stage.tail()}")
                break
            await asyncio.sleep(POLL_S)
    finally:
        await rows.stop()
        await prod.stop()
        stop_stage(stage)
        restart.marks = log_marks(stage.tail(10**8), restart.spawned_wall)
        if worker_log.exists():
            worker_log.rename(home / "processors-restarted.log")
    return restart


async def run_phase(opts: Options, n: int, base: str, tmp: Path) -> Phase:
    users = opts.users(n)
    name = f"n{n}"
    home = tmp / name
    env = {**os.environ, "EVENTPIPE_KAFKA_BOOTSTRAP": opts.kafka, "EVENTPIPE_HOME": str(home),
           "EVENTPIPE_TOPIC_PREFIX": f"{base}{name}_"}
    settings = _settings(env)
    topics = topics_for(settings)
    group = topics.group("processors")
    print(f"-- {n:,} events over {users:,} users, every event a $set ({settings.topic_prefix}*)")
    team = await create_team(settings, "bench")
    await ensure_topics(settings)
    prod = producer(settings)
    await prod.start()
    started = time.perf_counter()
    sizes: list[int] = []
    keys: set[bytes] = set()
    identifies = 0
    preload_s = 0.0
    try:
        for messages in message_chunks(team.api_key, team.team_id, n, users):
            sizes += [len(v) for _, v in messages]
            keys.update(k for k, _ in messages)
            identifies += sum(b'"event":"$identify"' in v for _, v in messages)
            preload_s += await preload(prod, topics.raw_events, messages)
    finally:
        await prod.stop()
    print(f"   built and preloaded {len(sizes):,} raw events of team {team.team_id} in "
          f"{time.perf_counter() - started:.1f} s ({preload_s:.1f} s of it producing): "
          f"{statistics.mean(sizes):,.0f} B avg, {len(keys):,} distinct ids, {identifies:,} $identify merges")
    probes = build_probes(team.api_key, team.team_id, n, users)

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    stage: Stage | None = None
    try:
        async def processed() -> int:
            try:
                return sum((await committed(admin, group, topics.raw_events)).values())
            except KafkaError:  # the group's coordinator is not there before the worker joined
                return 0

        stage = Stage("processors", env, home)
        spawned_wall = time.time()
        meter = CpuMeter()
        meter.pids = {"bench": os.getpid(), "worker": stage.pid, "broker": _broker_pid()}
        progress = Progress(n, stage.started)
        first, last = await watch(progress, processed, stage, meter, timeout_s=120 + n / 500, interval_s=0.2,
                                  stall_s=60)
        usage = CpuMeter.usage(first, last) if first else {}
        drained_s = await drain_inbox(admin, settings, stage)
        print(f"   1 worker processed {n:,} events: {progress.rate:,.0f} events/s ({progress.measured:,} in "
              f"{progress.seconds:.1f} s from its first commit to committed = end offsets; started "
              f"{progress.startup_s:.1f} s after spawn)")
        print(f"    {cpu_line(usage, progress.seconds, progress.measured)}")
        print(f"    identity_inbox (merges, forwards of identified ids' events) committed to its end "
              f"{drained_s:.1f} s after events_raw, event rows ≥ N")
        stopping = time.perf_counter()
        code = stage.stop()
        stop_s = time.perf_counter() - stopping
        print(f"   SIGTERM: the worker exited with {code} in {stop_s:.1f} s")
        first_marks = log_marks(stage.tail(10**8), spawned_wall)
        (home / "processors.log").rename(home / "processors-first.log")
        if "worker ready" in first_marks:
            print(f"   its own start, on an empty table: 'Worker ready' {first_marks['worker ready']:.1f} s after the "
                  f"spawn (the fixed part of a start: imports, topics, group join)")
        stage = None
        if (home / "run" / "processor.ready").exists():
            print("   (its ready file was left behind: removed)")
            (home / "run" / "processor.ready").unlink()

        topic = await changelog_topic(admin, group)
        before = await read_changelog(settings.kafka_bootstrap, admin, topic, settings.partitions)
        print_changelog(before, n)
        async with _Offsets(settings.kafka_bootstrap) as offsets:
            row_offsets = await offsets.end(topics.events, settings.partitions)
        restart = await restart_phase(settings, env, home, admin, before, probes, row_offsets)
        print_restart(restart, before)
        return Phase(n, users, identifies, statistics.mean(sizes), progress, usage, stop_s, code,
                     first_marks.get("worker ready"), before, restart)
    finally:
        if stage is not None:
            stop_stage(stage)
        await admin.close()


async def drain_inbox(admin: AIOKafkaAdminClient, settings: config.Settings, stage: Stage) -> float:
    """Seconds until the worker also finished the inbox: its committed offsets on identity_inbox at the
    inbox's end offsets (twice in a row: handling inbox messages sends more) and N event rows out. Without
    this the worker would be stopped with forwarded events still in the inbox, and they would come out
    after the restart."""
    topics = topics_for(settings)
    group = topics.group("processors")
    began = time.perf_counter()
    settled = 0
    async with _Offsets(settings.kafka_bootstrap) as offsets:
        raw = sum((await offsets.end(topics.raw_events, settings.partitions)).values())
        while True:
            stage.check_alive()
            end = await offsets.end(topics.identity_inbox, settings.partitions)
            done = await committed(admin, group, topics.identity_inbox)
            rows = sum((await offsets.end(topics.events, settings.partitions)).values())
            settled = settled + 1 if rows >= raw and all(done.get(p, 0) >= o for p, o in end.items()) else 0
            if settled >= 2:
                return time.perf_counter() - began
            if time.perf_counter() - began > 120:
                raise RuntimeError(f"identity_inbox not drained after 120 s (committed {done}, end {end}, "
                                   f"{rows:,} of {raw:,} event rows); log:\n{stage.tail()}")
            await asyncio.sleep(0.2)


# Faust's log lines that split a start: joined and assigned, table recovery from the changelog, resumed.
MARKS = {
    "partitions assigned": "Setting newly assigned partitions",
    "changelog read starts": "Restoring state from changelog topics",
    "changelog read done": "Done reading from changelog topics",
    "worker ready": "Worker ready",
}
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_marks(log: str, spawned_wall: float) -> dict[str, float]:
    """Seconds after the spawn of the first line of each of :data:`MARKS` (from its log timestamps)."""
    marks: dict[str, float] = {}
    for line in log.splitlines():
        match = _LOG_TIME.match(line)
        if not match:
            continue
        for name, text in MARKS.items():
            if name not in marks and text in line:
                at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                marks[name] = at - spawned_wall
    return marks


class _Offsets:
    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)

    async def __aenter__(self) -> _Offsets:
        await self.consumer.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.consumer.stop()

    async def end(self, topic: str, partitions: int) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: o for tp, o in (await self.consumer.end_offsets(tps)).items()}


def print_changelog(c: Changelog, n: int) -> None:
    starts = ", ".join(f"{p}: {c.start[p]:,}" for p in sorted(c.start))
    print(f"   changelog {c.topic.rsplit('_', 1)[-1]}: offsets end - start = {c.offsets:,} writes "
          f"({c.offsets / n:.2f} per event); a consumer reads {c.records:,} records from its start now "
          f"({c.compacted:,} = {c.compacted / c.offsets if c.offsets else 0:.0%} compacted away), "
          f"{c.keys:,} distinct keys (the live state), {c.tombstones:,} tombstones; read by a bare consumer in "
          f"{c.read_s:.1f} s ({c.records / c.read_s if c.read_s else 0:,.0f} records/s, "
          f"{c.value_bytes / 1e6:,.0f} MB of values)")
    print(f"    log start offsets {{{starts}}}"
          + (" (moved: the cleaner removed whole leading segments)" if c.start_moved else " (not moved: compaction "
             "removes records inside the log, it leaves the start offsets where they were)"))
    if c.segments is not None:
        print(f"    on the local broker: {c.segments} segment files, {c.segment_bytes / 1e6:,.0f} MB")
    print(f"    topic configs: {', '.join(f'{k}={v}' for k, v in c.configs.items())}")


def print_restart(r: Restart, c: Changelog) -> None:
    print(f"   restart (same settings and EVENTPIPE_HOME), from the spawn: ready file {r.since(r.ready_at)}, "
          f"'Worker ready' logged {r.since(r.logged_ready_at)}, group Stable with it holding events_raw "
          f"{r.since(r.stable_at)}; probes produced {r.since(r.probes_sent_at)}")
    if r.ready_at is not None and r.cpu_at_ready is not None:
        seconds = r.ready_at - r.spawned
        print(f"    until ready: worker CPU {r.cpu_at_ready:.1f} s ({r.cpu_at_ready / seconds:.0%} of a core), "
              f"{r.cpu_at_ready / c.records * 1e6 if c.records else 0:.0f} µs per changelog record "
              f"({c.records / seconds:,.0f} records/s over the whole start)")
        print(f"    {cpu_line(r.usage, seconds, c.records, 'record')}")
    if r.marks:
        print("    its log, from the spawn: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.marks.items()))
    for p in r.probes:
        verdict = ("state restored" if p.seq == p.expected_seq else
                   f"WRONG: expected seq {p.expected_seq}" if p.row_at is not None else "NO ROW")
        print(f"    probe, {p.label} {p.distinct_id}: row {r.since(p.row_at)} after the spawn, "
              f"person_properties.seq {p.seq} ({verdict})")
    if r.unexpected:
        print(f"    {r.unexpected:,} other event rows came out after the restart (work the first worker left: "
              f"re-deliveries)")
    for note in r.notes:
        print(f"    {note}")


# ---------------------------------------------------------------------------------------------- main


async def _main(opts: Options) -> list[Row]:
    cores = os.cpu_count() or 1
    base = f"bench{uuid.uuid4().hex[:8]}_"
    print("== restart benchmark")
    print(f"   {cores} CPU cores; kafka {opts.kafka}, topic prefix {base}; one worker processes N events that all "
          f"write state, is stopped (SIGTERM) and started again; target: ready and serving within {TARGET_S:.0f} s "
          f"after {TARGET_EVENTS:,} events")
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="eventpipe-bench-") as tmp:
        try:
            for n in opts.events:
                phases.append(await run_phase(opts, n, base, Path(tmp)))
        finally:
            await delete_kafka_state(opts.kafka, base)
    if phases:
        _summary(phases)
    return figures(phases)


def figures(phases: list[Phase]) -> list[Row]:
    """Headline rows for the one table of ``python -m bench``: restart -> all probe rows served, per N."""
    return [at_most("restart", f"restart -> serving after {ph.events:,} events", ph.restart.all_rows_at -
                    ph.restart.spawned, "s", TARGET_S, note=f"target is for {TARGET_EVENTS:,}")
            for ph in phases if ph.restart.all_rows_at is not None]


def _summary(phases: list[Phase]) -> None:
    print(f"== summary (restart = spawn of the new worker; target ≤ {TARGET_S:.0f} s after {TARGET_EVENTS:,} events)")
    rows = [("N events", "D ids", "events/s", "changelog writes", "records read now", "live keys",
             "empty start", "restart -> ready", "-> first row", "-> all probe rows", "state")]
    for ph in phases:
        r, c = ph.restart, ph.changelog
        state = ("restored" if all(p.seq == p.expected_seq for p in r.probes) else "WRONG")
        rows.append((f"{ph.events:,}", f"{ph.users:,}", f"{ph.processing.rate:,.0f}", f"{c.offsets:,}",
                     f"{c.records:,}", f"{c.keys:,}",
                     f"{ph.first_ready_s:.1f} s" if ph.first_ready_s is not None else "-", r.since(r.ready_at),
                     r.since(r.first_row_at), r.since(r.all_rows_at), state))
    print_table(rows)
    for ph in phases:
        r = ph.restart
        serving = r.all_rows_at
        if serving is None:
            continue
        seconds = serving - r.spawned
        scaled = f" (N = {ph.events:,}, not {TARGET_EVENTS:,}: the target is for the latter)" \
            if ph.events != TARGET_EVENTS else ""
        verdict = "meets" if seconds <= TARGET_S else "misses"
        print(f"   N = {ph.events:,}: serving {seconds:.1f} s after the restart, {verdict} the {TARGET_S:.0f} s "
              f"target{scaled}")
    if len(phases) > 1:
        a, b = phases[0], phases[-1]
        ra, rb = a.restart, b.restart
        if ra.ready_at and rb.ready_at:
            records = b.changelog.records / max(1, a.changelog.records)
            print(f"   trend: {b.events / a.events:.1f}x the events, {records:.1f}x the records read, "
                  f"{b.changelog.keys / max(1, a.changelog.keys):.1f}x the live keys, "
                  f"{(rb.ready_at - rb.spawned) / (ra.ready_at - ra.spawned):.1f}x the time to ready")


def run(args: argparse.Namespace) -> list[Row]:
    quiet_kafka_logs()
    return run_async(_main(Options.from_args(args)))
