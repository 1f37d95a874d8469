"""Sink throughput: a bare ClickHouse insert of the rows (the ceiling) against the real sink subprocess.

Every phase writes the same ``--sink-rows`` event rows (:func:`eventpipe.contract.event_row` of
posthog-js-like events, ``ujson`` as the processors write them) into its own fresh database on
the ClickHouse server (by default the local one of ``deploy/local/clickhouse.sh``, as its writer user),
with the project's own DDL (:func:`clickhouse.store.migrate`):

1. ``raw columnar insert`` — the rows already converted to Python column values, inserted with a bare
   clickhouse-driver ``Client`` (``columnar=True``, the store's client settings) in batches of the sink's
   batch size: the cost of the driver's encoding and of the server.
2. ``store.insert in-process`` — :meth:`clickhouse.store.ServerStore.insert` called directly on the Kafka
   message values (JSON decode + per-column conversion + the same insert), no Kafka, no event loop.
3. ``sink`` — ``python -m eventpipe.cli sink`` as a subprocess, consuming ``<prefix>clickhouse_events``
   (preloaded), timed from the first rows counted in ClickHouse to ``count() = N``. Its batch sizes come
   from its ``/metrics`` and from the never-merged parts the inserts created.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import os
import secrets
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import ujson

from bench.common import (
    LOCAL_DIR,
    CpuMeter,
    Progress,
    Stage,
    cpu_line,
    delete_kafka_state,
    local_clickhouse,
    preload,
    print_profile,
    print_table,
    quiet_kafka_logs,
    run_async,
    stage_meter,
    stop_stage,
    watch,
)
from bench.gateway import _env_int, _event, _free_port, _ratio, _settings
from bench.summary import Row, ratio_row
from clickhouse.schema import TABLE_COLUMNS
from clickhouse.store import JSON_INPUT_SETTINGS, KafkaRow, ServerStore, connection_args, json_each_row, migrate
from eventpipe import config
from eventpipe.config import StoreURL
from eventpipe.contract import event_row, format_ts
from eventpipe.kafka import ensure_topics, producer, topics_for

TARGET = 0.8  # the project's goal for sink ÷ raw insert
COLUMNS = TABLE_COLUMNS["events"]
TEAM_ID = 1


# ----------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sink benchmark")
    g.add_argument(
        "--sink-rows",
        type=int,
        default=_env_int("BENCH_SINK_ROWS", 100_000),
        help="event rows preloaded into <prefix>clickhouse_events (env BENCH_SINK_ROWS, default 100000)",
    )
    g.add_argument(
        "--clickhouse",
        metavar="URL",
        default=local_clickhouse(),
        help="ClickHouse server as clickhouse://user:password@host:port, without database: every phase "
        "creates and drops its own (env EVENTPIPE_TEST_CLICKHOUSE; default: the local server's writer user, "
        "from .local/clickhouse/server.json)",
    )
    g.add_argument(
        "--sink-profile",
        metavar="FILE",
        help="run the (server) sink under cProfile, write the stats to FILE and print the top functions "
        "(profiling slows it: its figures are then not comparable)",
    )


@dataclasses.dataclass(frozen=True)
class Options:
    rows: int
    distinct_ids: int
    kafka: str
    clickhouse: str
    profile: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        if not args.clickhouse:
            raise SystemExit(
                "sink benchmark: no ClickHouse server: the local one is not set up (no server.json under "
                f"{LOCAL_DIR / 'clickhouse'}; start it with bash deploy/local/clickhouse.sh start), and neither "
                "--clickhouse nor EVENTPIPE_TEST_CLICKHOUSE is given"
            )
        return cls(
            rows=max(1, args.sink_rows),
            distinct_ids=max(1, args.distinct_ids),
            kafka=args.kafka,
            clickhouse=args.clickhouse.rstrip("/"),
            profile=Path(args.sink_profile).resolve() if args.sink_profile else None,
        )


# -------------------------------------------------------------------------------------------- rows


def build_rows(n: int, users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) as the processors write them to clickhouse_events: key uuid, value the row's JSON."""
    now = datetime.now(UTC)
    base = now - timedelta(minutes=30)
    created_at = format_ts(now)
    out = []
    for i in range(n):
        e = _event(i, base)
        user = i % users
        distinct_id = f"user-{user:05d}"
        props = {**e["properties"], "$ip": "127.0.0.1"}
        props["$session_id"] = str(uuid.UUID(int=user + 2 * 10**6))
        event_uuid = str(uuid.UUID(int=(1 << 120) + i))
        row = event_row(
            uuid=event_uuid,
            event=e["event"],
            properties=props,
            timestamp=format_ts(base + timedelta(milliseconds=7 * i)),
            team_id=TEAM_ID,
            distinct_id=distinct_id,
            created_at=created_at,
            person_id=str(uuid.uuid5(uuid.NAMESPACE_OID, distinct_id)),
            person_properties={"email": f"user{user}@example.com", "plan": ("free", "pro", "enterprise")[user % 3]},
        )
        out.append((event_uuid.encode(), ujson.dumps(row, ensure_ascii=False).encode()))
    return out


def kafka_rows(messages: list[tuple[bytes, bytes]], partitions: int) -> list[KafkaRow]:
    """The messages as the sink would hold them (coordinates made up: round-robin partitions)."""
    ts_ms = int(time.time() * 1000)
    return [KafkaRow(value, ts_ms, i // partitions, i % partitions) for i, (_, value) in enumerate(messages)]


def to_columns(store: ServerStore, rows: list[KafkaRow]) -> list[list[Any]]:
    """What ServerStore.insert hands clickhouse-driver: one list of Python values per column."""
    return store.to_columns("events", rows)


# ------------------------------------------------------------------------------------------ phases


@dataclasses.dataclass
class Phase:
    name: str
    rows: int
    seconds: float
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def print(self) -> None:
        print(f"  {self.name}: {self.rate:,.0f} rows/s ({self.rows:,} rows in {self.seconds:.2f} s)")
        if self.cpu:
            print(f"    {cpu_line(self.cpu, self.seconds, self.rows, 'row')}")
        for note in self.notes:
            print(f"    {note}")


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def bare_client(url: StoreURL) -> Any:
    """A clickhouse-driver client with the store's own settings (native protocol, no compression, no numpy):
    what both raw ceilings insert with."""
    from clickhouse_driver import Client

    return Client(
        **connection_args(url), database=url.database, send_receive_timeout=60, compression=False,
        settings={"use_numpy": False},
    )


def raw_columnar(url: StoreURL, columns: list[list[Any]], batch: int, meter: CpuMeter) -> Phase:
    client = bare_client(url)
    sql = f"INSERT INTO events ({', '.join(f'`{c}`' for c in COLUMNS)}) VALUES"
    n = len(columns[0])
    try:
        client.execute("SELECT 1")  # connect outside the clock
        before = meter.sample()
        started = time.perf_counter()
        for s in _batches(n, batch):
            client.execute(sql, [col[s] for col in columns], columnar=True)
        seconds = time.perf_counter() - started
        return Phase("raw columnar insert (clickhouse-driver)", n, seconds, CpuMeter.usage(before, meter.sample()))
    finally:
        client.disconnect()


def raw_json_each_row(url: StoreURL, rows: list[KafkaRow], batch: int, meter: CpuMeter) -> Phase:
    """The ceiling of the store's modern path: the same rows as JSONEachRow text (built before the clock),
    inserted inline by a bare client with the store's settings; the driver's work plus the server's parse."""
    client = bare_client(url)
    sql = f"INSERT INTO events ({', '.join(f'`{c}`' for c in COLUMNS)}) FORMAT JSONEachRow\n"
    bodies = [sql + json_each_row(rows[s]) for s in _batches(len(rows), batch)]
    try:
        client.execute("SELECT 1")
        before = meter.sample()
        started = time.perf_counter()
        for body in bodies:
            client.execute(body, settings=JSON_INPUT_SETTINGS)
        seconds = time.perf_counter() - started
        return Phase("raw JSONEachRow insert (clickhouse-driver)", len(rows), seconds,
                     CpuMeter.usage(before, meter.sample()))
    finally:
        client.disconnect()


def store_insert(
    store: ServerStore, rows: list[KafkaRow], batch: int, meter: CpuMeter, profile: Path | None = None
) -> Phase:
    """ServerStore.insert in this thread, batch after batch; with ``profile``, under cProfile (the code
    the sink runs in its store thread, which a cProfile of the sink process does not see)."""
    store.query("SELECT 1")
    profiler = cProfile.Profile() if profile else None
    before = meter.sample()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for s in _batches(len(rows), batch):
        chunk = rows[s]
        store.insert("events", chunk, f"bench:0:{chunk[0].offset}-{chunk[-1].offset}")
    if profiler:
        profiler.disable()
        profiler.dump_stats(str(profile))
    seconds = time.perf_counter() - started
    name = "store.insert in-process (ServerStore)" + (" [under cProfile]" if profiler else "")
    return Phase(name, len(rows), seconds, CpuMeter.usage(before, meter.sample()))


class SinkAdmin:
    """The sink's loopback admin endpoint: /metrics behind the bearer secret we gave it
    (EVENTPIPE_ADMIN_SECRET, so the sink writes no run/sink-admin.json)."""

    def __init__(self, port: int, secret: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {secret}"}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SinkAdmin:
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def metrics(self) -> dict[str, float]:
        """``name{labels}`` -> value; empty while the endpoint is not up."""
        assert self.session is not None
        try:
            async with self.session.get(self.url + "/metrics") as r:
                text = await r.text() if r.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def batch_notes(end: dict[str, float], start: dict[str, float], window_s: float) -> list[str]:
    """Batch sizes and insert time from the sink's /metrics: over the whole run and within the window."""
    rows_key, batches_key = 'eventpipe_sink_rows_total{table="events"}', 'eventpipe_sink_batches_total{table="events"}'
    sum_key, count_key = "eventpipe_sink_insert_seconds_sum", "eventpipe_sink_insert_seconds_count"
    notes = []
    rows, batches = end.get(rows_key, 0.0), end.get(batches_key, 0.0)
    if batches:
        notes.append(f"sink /metrics: {batches:.0f} inserts of {rows / batches:,.0f} rows on average "
                     "(eventpipe_sink_rows_total ÷ eventpipe_sink_batches_total)")
    insert_s = end.get(sum_key, 0.0) - start.get(sum_key, 0.0)
    inserts = end.get(count_key, 0.0) - start.get(count_key, 0.0)
    if inserts and window_s > 0:
        notes.append(
            f"in the measured window: {inserts:.0f} inserts, {insert_s / inserts * 1000:.0f} ms each on average, "
            f"{insert_s / window_s:.0%} of the window spent waiting for inserts (the sink's store thread busy; the "
            f"rest is the event loop fetching and buffering)"
        )
    retries = end.get('eventpipe_sink_insert_retries_total{table="events"}')
    if retries:
        notes.append(f"{retries:.0f} inserts were retried")
    return notes


async def sink_phase(
    name: str, stage: Stage, settings: config.Settings, n: int, count_rows: Any, pids: dict[str, int | None],
) -> Phase:
    """Wait for the sink to write N rows (``count_rows(admin)`` -> rows now in the table), read /metrics."""
    meter = stage_meter("sink", stage.pid)
    meter.pids.update(pids)
    progress = Progress(n, stage.started)
    at_first: dict[str, float] = {}
    async with SinkAdmin(settings.admin_port, settings.admin_secret) as admin:

        async def on_first() -> None:
            at_first.update(await admin.metrics())

        first, last = await watch(
            progress, lambda: count_rows(admin), stage, meter, 60 + n / 500, 0.05, on_first=on_first
        )
        metrics = await admin.metrics()
    phase = Phase(name, progress.measured, progress.seconds, CpuMeter.usage(first, last) if first else {})
    phase.notes.append(
        f"start-up: first rows counted {progress.startup_s:.1f} s after spawn; {progress.first_count:,} rows were "
        f"in before the clock started (not in the figure above)"
    )
    phase.notes += batch_notes(metrics, at_first, progress.seconds)
    return phase


def server_count(url: StoreURL) -> Any:
    """``count_rows`` for the server: SELECT count() over a bare client (0 until the table exists)."""
    from clickhouse_driver import Client
    from clickhouse_driver.errors import ServerException

    client = Client(**connection_args(url), connect_timeout=5)

    def count() -> int:
        try:
            return int(client.execute(f"SELECT count() FROM `{url.database}`.events")[0][0])
        except ServerException:
            return 0

    async def count_rows(_admin: SinkAdmin) -> int:
        return await asyncio.to_thread(count)

    return count_rows, client


def insert_blocks(client: Any, database: str) -> list[int]:
    """Rows of every insert into ``database``.events, from its never-merged parts: one block number per
    insert, a part made by a merge spans several (merged-away parts stay listed, inactive, for
    old_parts_lifetime). Not ``level = 0``: recent ClickHouse (the local 26.9) gives an inserted part
    level 1 when the insert already ran the engine's merge on it (optimize_on_insert, on by default;
    ReplacingMergeTree here)."""
    rows = client.execute(
        "SELECT min_block_number, argMin(rows, level) FROM system.parts WHERE database = %(db)s "
        "AND table = 'events' AND min_block_number = max_block_number GROUP BY min_block_number "
        "ORDER BY min_block_number",
        {"db": database},
    )
    return [int(r[1]) for r in rows]


def describe_blocks(blocks: list[int]) -> str:
    if not blocks:
        return "no insert parts found"
    counts: dict[int, int] = {}
    for b in blocks:
        counts[b] = counts.get(b, 0) + 1
    common = ", ".join(f"{size:,} x{k}" for size, k in sorted(counts.items(), key=lambda kv: (-kv[1], -kv[0]))[:6])
    return (
        f"{len(blocks)} inserts, rows per insert: mean {statistics.mean(blocks):,.0f}, median "
        f"{statistics.median(blocks):,.0f}, min {min(blocks):,}, max {max(blocks):,} (most common: {common})"
    )


# ---------------------------------------------------------------------------------------------- main


def _drop_databases(url: StoreURL, names: list[str]) -> None:
    from clickhouse_driver import Client

    client = Client(**connection_args(url), connect_timeout=5)
    try:
        for name in names:
            client.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        client.disconnect()


async def _main(opts: Options) -> list[Row]:
    cores = os.cpu_count() or 1
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench{run_id}_"
    server = StoreURL.parse(opts.clickhouse)
    databases = {k: f"bench{run_id}_{k}" for k in ("raw", "store", "sink")}
    print("== sink benchmark")
    print(
        f"   {cores} CPU cores shared by the sink (1 process: event loop + 1 insert thread), this process, the local"
        f" Kafka broker and the ClickHouse server; kafka {opts.kafka}, topic prefix {prefix}"
    )
    results: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory(prefix="eventpipe-bench-") as tmp:
        secret = secrets.token_hex(32)
        env = {
            **os.environ,
            "EVENTPIPE_KAFKA_BOOTSTRAP": opts.kafka,
            "EVENTPIPE_HOME": str(Path(tmp) / "home"),
            "EVENTPIPE_TOPIC_PREFIX": prefix,
            "EVENTPIPE_CLICKHOUSE_URL": f"{opts.clickhouse}/{databases['sink']}",
            "EVENTPIPE_ADMIN_PORT": str(_free_port()),
            "EVENTPIPE_ADMIN_SECRET": secret,
        }
        settings = _settings(env)
        topics = topics_for(settings)
        batch = settings.sink_batch_rows
        stage: Stage | None = None
        created: list[str] = []
        try:
            started = time.perf_counter()
            messages = build_rows(opts.rows, opts.distinct_ids)
            rows = kafka_rows(messages, settings.partitions)
            print(
                f"   {len(messages):,} event rows built with event_row in {time.perf_counter() - started:.1f} s: "
                f"{statistics.mean(len(v) for _, v in messages):,.0f} B of JSON avg, {opts.distinct_ids:,} distinct ids"
            )
            await ensure_topics(settings)
            prod = producer(settings)
            await prod.start()
            try:
                seconds = await preload(prod, topics.events, messages)
            finally:
                await prod.stop()
            print(f"   preloaded {topics.events} in {seconds:.1f} s ({len(messages) / seconds:,.0f} msg/s)")

            # ---- ClickHouse server
            raw_url = dataclasses.replace(server, database=databases["raw"])
            store = ServerStore(raw_url)
            created.append(databases["raw"])
            version = ".".join(map(str, store.dialect.version))
            print(f"-- ClickHouse server {server.host}:{server.port} ({version}), batches of {batch:,} rows "
                  f"(EVENTPIPE_SINK_BATCH_ROWS), database per phase")
            meter = stage_meter("sink", clickhouse=True)
            try:
                migrate(store)
                started = time.perf_counter()
                columns = to_columns(store, rows)
                convert_s = time.perf_counter() - started
                started = time.perf_counter()
                for s in _batches(len(rows), batch):
                    json_each_row(rows[s])
                splice_s = time.perf_counter() - started
            finally:
                store.close()
            print(
                f"   in this process, per row: JSON -> Python columns (ServerStore.to_columns, the 18.16 path) "
                f"{convert_s / len(rows) * 1e6:.1f} µs; message -> JSONEachRow line (json_each_row, the modern "
                f"path) {splice_s / len(rows) * 1e6:.1f} µs"
            )
            results["raw"] = raw_columnar(raw_url, columns, batch, meter)
            results["raw"].print()
            del columns
            results["raw_json"] = raw_json_each_row(raw_url, rows, batch, meter)
            results["raw_json"].print()

            store = ServerStore(dataclasses.replace(server, database=databases["store"]))
            created.append(databases["store"])
            try:
                migrate(store)
                store_profile = opts.profile.with_name(opts.profile.name + ".store") if opts.profile else None
                results["store"] = store_insert(store, rows, batch, meter, store_profile)
            finally:
                store.close()
            results["store"].print()

            print("-- sink: python -m eventpipe.cli sink, consuming the preloaded topic")
            if opts.profile:
                print(
                    f"   (under cProfile -> {opts.profile}: it profiles the sink's event-loop thread only, the inserts "
                    f"run in its store thread: see {opts.profile.name}.store, store.insert profiled in-process)"
                )
            sink_url = settings.store
            created.append(databases["sink"])
            count_rows, counter = server_count(sink_url)
            try:
                stage = Stage("sink", env, settings.home, opts.profile)
                ch_pid = {"clickhouse": meter.pids.get("clickhouse")}
                results["sink"] = await sink_phase("sink (server)", stage, settings, len(rows), count_rows, ch_pid)
                blocks = await asyncio.to_thread(insert_blocks, counter, databases["sink"])
                results["sink"].notes.append("ClickHouse parts: " + describe_blocks(blocks))
            finally:
                counter.disconnect()
            results["sink"].print()
            stop_stage(stage)
            stage = None
        finally:
            stop_stage(stage)
            await delete_kafka_state(opts.kafka, prefix)
            if created:
                try:
                    _drop_databases(server, created)
                    print(f"   dropped databases {', '.join(created)}")
                except Exception as exc:  # cleanup must not hide the figures
                    print(f"   could not drop databases {', '.join(created)}: {exc!r}")

    _summary(results, cores)
    print_profile(opts.profile, "sink (event-loop thread)")
    if opts.profile:
        print_profile(opts.profile.with_name(opts.profile.name + ".store"), "store.insert (the store thread's work)")
    return figures(results)


def figures(results: dict[str, Phase]) -> list[Row]:
    """The headline row for the one table of ``python -m bench``: the sink ÷ the raw columnar insert."""
    if "raw" not in results or "sink" not in results:
        return []
    return [ratio_row("sink", "rows/s", results["sink"].rate, results["raw"].rate, "rows/s", TARGET)]


def _summary(results: dict[str, Phase], cores: int) -> None:
    if "raw" not in results or "sink" not in results:
        return
    print(f"== summary (rows/s; sink ÷ raw insert, target ≥ {TARGET})")
    table = [("phase", "rows/s", "÷ raw", "÷ raw JSON", "sink CPU", "bench CPU", "ClickHouse CPU")]

    def share(p: Phase, who: str) -> str:
        return f"{p.cpu[who] / p.seconds:.0%}" if who in p.cpu and p.seconds else "-"

    raw_json = results.get("raw_json")
    for key in ("raw", "raw_json", "store", "sink"):
        p = results.get(key)
        if p is None:
            continue
        table.append((p.name, f"{p.rate:,.0f}", _ratio(p.rate, results["raw"].rate),
                      _ratio(p.rate, raw_json.rate) if raw_json else "-", share(p, "sink"),
                      share(p, "bench"), share(p, "clickhouse")))
    print_table(table)
    ratio = results["sink"].rate / results["raw"].rate if results["raw"].rate else 0.0
    print(f"   sink ÷ raw = {ratio:.2f} ({'meets' if ratio >= TARGET else 'below'} the {TARGET} target; "
          f"figures vary ±15% run to run)")
    print(f"   note: {cores} cores shared by the sink, the broker, the ClickHouse server and this process; CPU "
          f"columns are shares of one core during each phase.")


def run(args: argparse.Namespace) -> list[Row]:
    quiet_kafka_logs()
    return run_async(_main(Options.from_args(args)))
