"""`eventpipe squash-overrides` against the local ClickHouse 26 server: events rewritten, squashed
overrides gone, a newer override written meanwhile kept, query answers unchanged; and the sink writing
the overrides topic into its table.

Each test gets a throwaway database (dropped afterwards); the sink test a Stack of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ujson

from clickhouse import squash
from clickhouse.store import KafkaRow, ServerStore, migrate
from eventpipe.config import StoreURL
from eventpipe.contract import EVENT_ROW_COLUMNS, OVERRIDE_ROW_COLUMNS, event_row, override_row
from tests import test_it_sql_docs as sql_docs
from tests.stack import KAFKA, ROOT, Stack, poll

TEAM, OTHER = 1, 2
P_OLD = "0b000000-0000-4000-8000-000000000001"  # the merged-away person the events still carry
P_NEW = "0a000000-0000-4000-8000-000000000002"
P_NEWER = "0c000000-0000-4000-8000-000000000003"
P_LATER = "0d000000-0000-4000-8000-000000000004"
P_OTHER = "0e000000-0000-4000-8000-000000000005"
WEIRD = "x' OR '1'='1 \\ é"  # a distinct id that would break a spliced string literal
OLD_MS = int((time.time() - 3 * 24 * 3600) * 1000)  # Kafka timestamp of an override written 3 days ago


@pytest.fixture
def store(clickhouse_server: str) -> Iterator[ServerStore]:
    s = ServerStore(StoreURL.parse(f"{clickhouse_server}/eventpipe_test_squash_{uuid.uuid4().hex[:8]}"))
    try:
        migrate(s)
        yield s
    finally:
        s.execute(f"DROP DATABASE IF EXISTS `{s.url.database}`")
        s.close()


class Writer:
    """Rows as the sink stores them: one insert (one part) per row, Kafka coordinates attached."""

    def __init__(self, store: ServerStore) -> None:
        self.store, self.offset = store, 0

    def _insert(self, table: str, row: dict[str, Any], timestamp_ms: int) -> None:
        value = json.dumps(row).encode()
        self.store.insert(table, [KafkaRow(value, timestamp_ms, self.offset, 0)], dedup_token=None)
        self.offset += 1

    def event(self, distinct_id: str, person: str, team: int = TEAM) -> None:
        when = "2024-01-01 10:00:00.000000"
        row = event_row(
            uuid=str(uuid.uuid4()),
            event="$pageview",
            properties={},
            timestamp=when,
            team_id=team,
            distinct_id=distinct_id,
            created_at=when,
            person_id=person,
        )
        assert tuple(row) == EVENT_ROW_COLUMNS
        self._insert("events", row, int(time.time() * 1000))

    def override(
        self, distinct_id: str, person: str, version: int, team: int = TEAM, deleted: int = 0, at_ms: int = OLD_MS
    ) -> None:
        row = override_row(team, distinct_id, person, version, is_deleted=deleted)
        assert tuple(row) == OVERRIDE_ROW_COLUMNS
        self._insert("person_distinct_id_overrides", row, at_ms)


def persons(store: ServerStore, team: int = TEAM) -> dict[str, list[str]]:
    """distinct id -> the person_id column of its events (sorted)."""
    rows = store.query(
        "SELECT distinct_id, arraySort(groupArray(toString(person_id))) FROM events WHERE team_id = {t:Int64} "
        "GROUP BY distinct_id",
        {"t": team},
    ).rows
    return {str(d): list(p) for d, p in rows}


def resolved(store: ServerStore, team: int = TEAM) -> dict[str, list[str]]:
    """distinct id -> the persons its events resolve to, the way docs/sql.md's queries resolve them."""
    rows = store.query(
        """SELECT e.distinct_id,
       arraySort(groupArray(toString(if(notEmpty(o.person_id), o.person_id, e.person_id))))
FROM events AS e
LEFT JOIN (SELECT team_id, distinct_id, person_id FROM person_distinct_id_overrides_current
           WHERE team_id = {t:Int64}) AS o ON o.team_id = e.team_id AND o.distinct_id = e.distinct_id
WHERE e.team_id = {t:Int64}
GROUP BY e.distinct_id""",
        {"t": team},
    ).rows
    return {str(d): list(p) for d, p in rows}


def overrides(store: ServerStore) -> list[tuple[Any, ...]]:
    return store.query(
        "SELECT team_id, distinct_id, toString(person_id), is_deleted, version FROM person_distinct_id_overrides "
        "ORDER BY team_id, distinct_id, version"
    ).rows


def test_squash_rewrites_events_and_deletes_exactly_the_squashed_overrides(store: ServerStore) -> None:
    w = Writer(store)
    for distinct_id in ("anon-1", "anon-1", WEIRD, "chain", "fresh", "gone", "alice"):
        w.event(distinct_id, P_OLD)
    w.event("anon-1", P_NEW)  # sent after the merge: already right
    w.event("anon-1", P_OTHER, team=OTHER)  # another team's id of the same name: not overridden
    w.override("anon-1", P_NEW, 1)
    w.override(WEIRD, P_NEW, 1)
    w.override("chain", P_NEW, 1)
    w.override("chain", P_NEWER, 2)  # re-pointed twice: the latest version wins, both rows go
    w.override("fresh", P_NEW, 1, at_ms=int(time.time() * 1000))  # younger than min_age: left alone
    w.override("gone", P_NEW, 1)
    w.override("gone", P_NEW, 2, deleted=1)  # latest is deleted: no live override, nothing to squash
    before = resolved(store)
    assert before["anon-1"] == sorted([P_NEW] * 3) and before["chain"] == [P_NEWER] and before["gone"] == [P_OLD]

    lines: list[str] = []
    report = squash.squash(store, min_age_s=3600, batch_rows=2, progress=lines.append)

    assert (report.overrides, report.squashed, report.kept, report.events) == (3, 3, 0, 4)
    assert report.batches == 2 and len(lines) == 3  # the snapshot line, one per batch
    assert persons(store) == {
        "anon-1": [P_NEW] * 3,
        WEIRD: [P_NEW],
        "chain": [P_NEWER],
        "fresh": [P_OLD],
        "gone": [P_OLD],
        "alice": [P_OLD],
    }
    assert persons(store, OTHER) == {"anon-1": [P_OTHER]}
    assert overrides(store) == [
        (TEAM, "fresh", P_NEW, 0, 1),
        (TEAM, "gone", P_NEW, 0, 1),
        (TEAM, "gone", P_NEW, 1, 2),
    ]
    assert resolved(store) == before  # the same answers, now from the events' own column

    again = squash.squash(store, min_age_s=3600)
    assert (again.overrides, again.squashed, again.events) == (0, 0, 0)
    assert squash.squash(store, min_age_s=0, dry_run=True).overrides == 1  # "fresh", once old enough
    assert len(overrides(store)) == 3  # the dry run deleted nothing


class DuringSquash:
    """The store, with writes of concurrent ingestion slipped in between the squash's statements."""

    def __init__(self, store: ServerStore, writer: Writer) -> None:
        self.store, self.writer, self.dialect = store, writer, store.dialect

    def query(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        result = self.store.query(sql, params)
        if sql.startswith("SELECT team_id, distinct_id"):  # right after the snapshot: a new merge
            self.writer.override("anon-1", P_LATER, 2, at_ms=int(time.time() * 1000))
            self.writer.event("anon-1", P_LATER)
        return result

    def execute(self, sql: str, settings: dict[str, Any] | None = None) -> None:
        self.store.execute(sql, settings)
        if sql.startswith("ALTER TABLE events"):  # an event processed before the merge, stored late
            self.writer.event("late", P_OLD)


def test_an_override_written_during_the_squash_survives_it(store: ServerStore) -> None:
    w = Writer(store)
    w.event("anon-1", P_OLD)
    w.event("late", P_OLD)
    w.override("anon-1", P_NEW, 1)
    w.override("late", P_NEW, 1)

    report = squash.squash(DuringSquash(store, w), min_age_s=0)  # type: ignore[arg-type]

    # anon-1's snapshot override (v1) is squashed, the merge that came meanwhile (v2) is not; "late" got
    # an event with the old person after the rewrite, so its override stays for the next run.
    assert (report.overrides, report.squashed, report.kept) == (2, 1, 1)
    assert overrides(store) == [(TEAM, "anon-1", P_LATER, 0, 2), (TEAM, "late", P_NEW, 0, 1)]
    assert resolved(store) == {"anon-1": [P_LATER, P_LATER], "late": [P_NEW, P_NEW]}

    # anon-1's two events (the rewrite also set the one stored with P_LATER to P_NEW: harmless, its v2
    # override was live) and the late event.
    report = squash.squash(store, min_age_s=0)
    assert (report.squashed, report.events) == (2, 3)
    assert overrides(store) == []
    assert persons(store) == resolved(store) == {"anon-1": [P_LATER, P_LATER], "late": [P_NEW, P_NEW]}


# Every query of docs/sql.md with the parameters its tests use, but 8.1 (what is left to squash).
DOC_RUNS: list[tuple[str, dict[str, str]]] = [
    ("1.1", sql_docs.WEEK_0),
    ("2.1", {**sql_docs.WEEK_0, "limit": "10"}),
    ("3.1", sql_docs.FUNNEL),
    ("4.1", {"team_id": "1", "cohort_start": "2024-01-01"}),
    ("4.1", {"team_id": "1", "cohort_start": "2024-01-08"}),
    ("5.1", {**sql_docs.JANUARY, "limit": "100"}),
    ("6.1", {"team_id": "1"}),
    ("6.2", {"team_id": "1", "distinct_id": "anon-1"}),
    ("7.1", sql_docs.WEEK_0),
]


def test_docs_queries_answer_the_same_after_the_squash(store: ServerStore) -> None:
    sql_docs.seed(store)
    assert sorted({key for key, _ in DOC_RUNS} | {"8.1"}) == sorted(sql_docs.QUERIES)
    before = [sql_docs.run(store, key, params) for key, params in DOC_RUNS]
    assert sql_docs.run(store, "8.1", {"team_id": "1"}) == [("anon-1", sql_docs.P_A, 1)]
    for table in ("events", "person_distinct_id_overrides"):
        store.execute(f"SYSTEM START MERGES {table}")  # mutations wait for merges to be allowed

    report = squash.squash(store, min_age_s=0)

    assert report.squashed == 1 and report.events == 1  # anon-1's page view from before the merge
    assert store.query("SELECT count() FROM person_distinct_id_overrides_current").rows == [(0,)]
    assert [sql_docs.run(store, key, params) for key, params in DOC_RUNS] == before
    assert sql_docs.run(store, "8.1", {"team_id": "1"}) == []  # nothing left to rewrite


def test_cli_dry_run_and_run(store: ServerStore, clickhouse_server: str) -> None:
    w = Writer(store)
    w.event("anon-1", P_OLD)
    w.override("anon-1", P_NEW, 1)
    env = {"EVENTPIPE_CLICKHOUSE_URL": f"{clickhouse_server}/{store.url.database}", "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eventpipe.cli", "squash-overrides", "--min-age", "0", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    dry = cli("--dry-run", "--team", str(TEAM))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "would squash 1 overrides, rewrote 1 events (dry run); 0 kept for the next run"
    assert "batch 1/1 team 1" in dry.stderr
    assert cli("--team", str(OTHER)).stdout.startswith("squashed 0 overrides, rewrote 0 events")
    done = cli()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "squashed 1 overrides, rewrote 1 events; 0 kept for the next run"
    assert persons(store) == {"anon-1": [P_NEW]} and overrides(store) == []

    bare = f"{store.url.database}_bare"  # created by the CLI's connection, never migrated
    try:
        env["EVENTPIPE_CLICKHOUSE_URL"] = f"{clickhouse_server}/{bare}"
        refused = cli()
        assert refused.returncode == 1 and "run `eventpipe migrate`" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        store.execute(f"DROP DATABASE IF EXISTS `{bare}`")


@pytest.mark.timeout(180)
def test_the_sink_writes_the_overrides_topic(kafka: str, clickhouse_server: str, tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer

    stack = Stack(tmp_path)
    try:
        stack.spawn("sink")
        poll(lambda: (stack.home / "run" / "sink.ready").exists(), 90, 0.2, "sink ready")
        topic = stack.settings.topic_prefix + "clickhouse_person_distinct_id_overrides"

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(topic, ujson.dumps(override_row(TEAM, "anon-1", P_NEW, 3)).encode())
            finally:
                await producer.stop()

        asyncio.run(produce())
        query = "SELECT team_id, distinct_id, person_id, is_deleted, version FROM person_distinct_id_overrides"
        rows = poll(lambda: stack.sql(query), timeout=60, interval=0.3, what="override row stored")
        assert [{k: str(v) for k, v in r.items()} for r in rows] == [
            {"team_id": "1", "distinct_id": "anon-1", "person_id": P_NEW, "is_deleted": "0", "version": "3"}
        ]
    finally:
        stack.close()
