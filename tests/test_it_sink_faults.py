"""The sink under faults: SIGKILLed mid-stream, ClickHouse gone for a minute. Nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import ujson

from eventpipe.contract import EVENT_ROW_COLUMNS
from tests.procs import peak_rss_kib
from tests.stack import KAFKA, ROOT, Stack, poll, topics

N = 100_000


def post_events(stack: Stack, api_key: str, n: int, tag: str, per_request: int = 500) -> None:
    async def run() -> None:
        sem = asyncio.Semaphore(8)
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> None:
                batch = [
                    {"event": "load", "distinct_id": f"{tag}-{(i * per_request + j) % 2000}", "properties": {"n": j}}
                    for j in range(min(per_request, n - i * per_request))
                ]
                async with sem, session.post(f"{stack.url}/batch/", json={"api_key": api_key, "batch": batch}) as r:
                    assert r.status == 200, await r.text()

            await asyncio.gather(*(one(i) for i in range((n + per_request - 1) // per_request)))

    asyncio.run(run())


def count(stack: Stack, expr: str = "count()", final: bool = False) -> int:
    return int(stack.sql(f"SELECT {expr} AS n FROM events{' FINAL' if final else ''}")[0]["n"])


@pytest.mark.timeout(900)
def test_sink_killed_three_times_loses_and_doubles_nothing(kafka: str, clickhouse_server: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        api_key = stack.create_team("faults")
        post_events(stack, api_key, N, "kill")
        for fraction in (0.2, 0.45, 0.7):
            poll(lambda f=fraction: count(stack) >= N * f, timeout=300, interval=0.5, what=f"{fraction:.0%} inserted")
            stack.kill("sink")
            stack.spawn("sink")
        # Plain count(), no FINAL, no uniqExact: a batch re-sent after a kill is cut at the same offsets
        # and carries the same insert_deduplication_token, so ClickHouse stores it once.
        poll(lambda: count(stack) >= N, timeout=300, interval=1, what="every event inserted")
        assert count(stack) == N
    finally:
        stack.close()


def _clickhouse(action: str) -> None:
    subprocess.run(["bash", str(ROOT / "deploy/local/clickhouse.sh"), action], check=True, timeout=120)


@pytest.mark.timeout(900)
def test_clickhouse_down_for_a_minute(kafka: str, clickhouse_server: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        api_key = stack.create_team("outage")
        post_events(stack, api_key, 2_000, "before")
        poll(lambda: count(stack) >= 2_000, timeout=120, what="events before the outage")
        _clickhouse("stop")
        try:
            sent = 2_000
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # events keep arriving while ClickHouse is away
                post_events(stack, api_key, 1_000, "during")
                sent += 1_000
                time.sleep(1)
            assert all(p.poll() is None for p in stack.procs), "a stage died while ClickHouse was down"
        finally:
            _clickhouse("start")
        poll(lambda: count(stack, "uniqExact(uuid)") == sent, timeout=300, interval=1, what="backlog drained")
        assert count(stack, final=True) == sent
        peak = peak_rss_kib(stack.pid("sink"))
        print(f"sink peak RSS during a 60 s ClickHouse outage with {sent} events: {peak / 1024:.0f} MiB")
        assert peak < 1024 * 1024, "sink memory should stay bounded (< 1 GiB)"
    finally:
        stack.close()


@pytest.mark.parametrize("runs", [2])
def test_migrations_twice_leave_schema_unchanged(
    kafka: str, clickhouse_server: str, tmp_path: Path, runs: int
) -> None:
    stack = Stack(tmp_path)
    try:
        schemas = []
        for _ in range(runs):
            res = stack.cli("migrate")
            assert res.returncode == 0, res.stderr
            rows = stack.sql(
                "SELECT name, engine, create_table_query FROM system.tables "
                "WHERE database = currentDatabase() ORDER BY name"
            )
            schemas.append(rows)
        assert schemas[0] == schemas[1]
        assert {r["name"] for r in schemas[0]} >= {"events", "person", "person_distinct_id", "groups",
                                                   "ingestion_warnings", "eventpipe_migrations"}
        applied = stack.sql("SELECT count() AS n, uniqExact(number) AS u FROM eventpipe_migrations")[0]
        assert int(applied["n"]) == int(applied["u"])  # each migration recorded once
        dry = stack.cli("migrate", "--dry-run")
        assert dry.returncode == 0 and "CREATE TABLE IF NOT EXISTS events" in dry.stdout
    finally:
        stack.close()


def _event_row(i: int, person_id: str = str(uuid.UUID(int=0))) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(EVENT_ROW_COLUMNS, "")
    ts = "2024-05-01 12:00:00.000000"
    row.update(
        uuid=str(uuid.UUID(int=i + 1)), event="refused-test", properties="{}", timestamp=ts, created_at=ts,
        team_id=1, distinct_id=f"d{i}", person_id=person_id, person_properties="{}",
    )
    return row


async def _produce_rows(stack: Stack, rows: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        for value in rows:  # one partition: the offsets are the list's indices
            await producer.send(topics(stack).events, value, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def _read_letters(stack: Stack, expected: int, wait_s: float) -> list[dict[str, object]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topics(stack).dead_letters, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(out) < expected and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                out += [ujson.loads(m.value) for m in messages]
    finally:
        await consumer.stop()
    return out


@pytest.mark.timeout(300)
def test_one_refused_row_goes_to_the_dlq_and_every_other_row_is_stored(
    kafka: str, clickhouse_server: str, tmp_path: Path
) -> None:
    # person_id is a UUID column: "not-a-uuid" is valid JSON the column cannot take (the server refuses the
    # insert with Code 376, CANNOT_PARSE_UUID). One such row in a batch of 5,000 must cost exactly that row.
    n, bad = 5_000, 3_210
    stack = Stack(tmp_path, extra_env={"EVENTPIPE_SINK_BATCH_ROWS": "5000", "EVENTPIPE_SINK_BATCH_SECONDS": "1"})
    try:
        stack.spawn("sink")
        poll(lambda: (stack.home / "run" / "sink.ready").exists(), 90, 0.2, "sink ready")
        rows = [ujson.dumps(_event_row(i, "not-a-uuid") if i == bad else _event_row(i)).encode() for i in range(n)]
        asyncio.run(_produce_rows(stack, rows))
        poll(lambda: count(stack) >= n - 1, timeout=120, interval=0.5, what="good rows inserted")
        letters = asyncio.run(_read_letters(stack, 1, 60))
        assert [(letter["partition"], letter["offset"]) for letter in letters] == [(0, bad)]
        assert "Code: 376" in str(letters[0]["reason"]) and letters[0]["raw"] == rows[bad].decode()
        assert count(stack) == n - 1
        assert stack.sql(f"SELECT count() AS n FROM events WHERE distinct_id = 'd{bad}'")[0]["n"] in (0, "0")
    finally:
        stack.close()
