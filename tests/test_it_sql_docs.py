"""Every ```sql block of docs/sql.md, run on a seeded database of the local ClickHouse 26 server, gives
the answer computed by hand.

The queries are read from the markdown itself, so the docs and this test cannot drift apart. The store
only, no Kafka.

The seeded team 1 (all times UTC, January 2024; week 0 = Mon 1 .. Sun 7, week 1 = 8 .. 14, week 2 = 15 .. 21):

* alice (person A, identified since December) and an anonymous id ``anon-1`` (person X): on 1 Jan 09:05
  ``$identify`` merges X into A. ``anon-1`` is re-pointed to A with version 1, X is written deleted
  (version 100). Events of ``anon-1`` sent before the merge still carry X as their ``person_id``; the
  merge's override (``anon-1`` -> A, version 1) is what the queries resolve them through.
* bob has an override to carol's person that was deleted later (its latest version is deleted): it
  must not count.
* bob (B), carol (C), dan (D, first seen in week 1, his person rows arrive newest version first) and
  ``guest-9``, an event sent with ``$process_person_profile: false`` (stable person id, no mapping).
* alice's ``signed_up`` is stored twice (a re-sent batch), and merges are stopped so the copy stays.
* team 2 has its own ``alice``; bob has an event on 31 Dec 23:59:59 UTC, just before the periods.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clickhouse import readonly
from clickhouse.store import KafkaRow, ServerStore, migrate
from eventpipe.config import StoreURL
from eventpipe.contract import (
    DISTINCT_ID_ROW_COLUMNS,
    EVENT_ROW_COLUMNS,
    OVERRIDE_ROW_COLUMNS,
    PERSON_ROW_COLUMNS,
    event_row,
    override_row,
    warning_row,
)
from processors.identity import personless_id

DOC = Path(__file__).resolve().parent.parent / "docs" / "sql.md"

TEAM, OTHER_TEAM = 1, 2
P_A = "0a000000-0000-4000-8000-000000000001"  # alice
P_X = "0b000000-0000-4000-8000-000000000002"  # anon-1 before the merge, then deleted
P_B = "0c000000-0000-4000-8000-000000000003"  # bob
P_C = "0d000000-0000-4000-8000-000000000004"  # carol
P_D = "0e000000-0000-4000-8000-000000000005"  # dan
P_T2 = "0f000000-0000-4000-8000-000000000006"  # alice of team 2
GUEST = personless_id(TEAM, "guest-9")

ALICE = {"email": "alice@example.com", "plan": "free"}
REFERRER = {"$initial_referrer": "google"}
MERGED = {**REFERRER, **ALICE}
MERGED_PRO = {**MERGED, "plan": "pro"}

# (uuid suffix, team, distinct id, event, timestamp, person_id on the row)
EVENTS: list[tuple[int, int, str, str, str, str]] = [
    (1, TEAM, "anon-1", "$pageview", "2024-01-01 08:00:00", P_X),
    (2, TEAM, "bob", "$pageview", "2024-01-01 08:30:00", P_B),
    (3, TEAM, "alice", "$identify", "2024-01-01 09:05:00", P_A),
    (4, TEAM, "alice", "signed_up", "2024-01-01 09:10:00", P_A),
    (5, TEAM, "bob", "signed_up", "2024-01-01 10:00:00", P_B),
    (6, TEAM, "alice", "purchase", "2024-01-01 12:00:00", P_A),
    (7, TEAM, "anon-1", "$pageview", "2024-01-02 10:00:00", P_A),
    (8, TEAM, "alice", "$pageview", "2024-01-02 11:00:00", P_A),
    (9, TEAM, "carol", "$pageview", "2024-01-02 14:00:00", P_C),
    (10, TEAM, "guest-9", "$pageview", "2024-01-02 15:00:00", GUEST),
    (11, TEAM, "bob", "purchase", "2024-01-03 09:00:00", P_B),  # 48.5 h after bob's page view
    (12, TEAM, "carol", "$pageview", "2024-01-07 23:59:59.500000", P_C),
    (13, TEAM, "dan", "$pageview", "2024-01-08 10:00:00", P_D),
    (14, TEAM, "dan", "signed_up", "2024-01-08 10:05:00", P_D),
    (15, TEAM, "alice", "$pageview", "2024-01-09 10:00:00", P_A),
    (16, TEAM, "carol", "$pageview", "2024-01-10 10:00:00", P_C),
    (17, TEAM, "bob", "$pageview", "2024-01-16 10:00:00", P_B),
    (18, TEAM, "alice", "$pageview", "2024-01-18 10:00:00", P_A),
    (19, TEAM, "bob", "$pageview", "2023-12-31 23:59:59", P_B),
    (20, OTHER_TEAM, "alice", "$pageview", "2024-01-01 09:00:00", P_T2),
    (21, OTHER_TEAM, "alice", "signed_up", "2024-01-01 09:30:00", P_T2),
    (22, OTHER_TEAM, "alice", "purchase", "2024-01-02 09:00:00", P_T2),
    (23, OTHER_TEAM, "alice", "$pageview", "2024-01-09 09:00:00", P_T2),
]
DUPLICATED = 4  # alice's signed_up, stored twice

# (id, created_at, team, properties, is_identified, is_deleted, version), in insertion order
PERSONS: list[tuple[str, str, int, dict[str, Any], int, int, int]] = [
    (P_A, "2023-12-20 10:00:00", TEAM, ALICE, 1, 0, 0),
    (P_X, "2024-01-01 08:00:00", TEAM, REFERRER, 0, 0, 0),
    (P_B, "2024-01-01 08:30:00", TEAM, {"email": "bob@example.com", "plan": "free"}, 1, 0, 0),
    (P_A, "2023-12-20 10:00:00", TEAM, MERGED, 1, 0, 1),  # the merge: target props win, earlier created_at
    (P_X, "2024-01-01 08:00:00", TEAM, REFERRER, 0, 1, 100),  # the merged-away source, deleted
    (P_A, "2023-12-20 10:00:00", TEAM, MERGED_PRO, 1, 0, 2),  # $set plan at the purchase
    (P_C, "2024-01-02 14:00:00", TEAM, {"email": "carol@example.com"}, 0, 0, 0),
    (P_D, "2024-01-08 10:00:00", TEAM, {"email": "dan@example.com", "plan": "trial"}, 1, 0, 1),  # newest first
    (P_D, "2024-01-08 10:00:00", TEAM, {"email": "dan@example.com"}, 1, 0, 0),
    (P_T2, "2023-11-01 00:00:00", OTHER_TEAM, {"email": "alice@other.example", "plan": "enterprise"}, 1, 0, 0),
]

# (team, distinct id, person, is_deleted, version)
DISTINCT_IDS: list[tuple[int, str, str, int, int]] = [
    (TEAM, "alice", P_A, 0, 0),
    (TEAM, "anon-1", P_X, 0, 0),
    (TEAM, "bob", P_B, 0, 0),
    (TEAM, "anon-1", P_A, 0, 1),  # re-pointed by the merge
    (TEAM, "carol", P_C, 0, 0),
    (TEAM, "dan", P_D, 0, 0),
    (OTHER_TEAM, "alice", P_T2, 0, 0),
]

# (team, distinct id, person, is_deleted, version): the ids merges re-pointed
OVERRIDES: list[tuple[int, str, str, int, int]] = [
    (TEAM, "anon-1", P_A, 0, 1),
    (TEAM, "bob", P_C, 0, 1),
    (TEAM, "bob", P_C, 1, 2),  # deleted: bob's events keep their own person
]

# (team, type, source, details, timestamp)
WARNINGS: list[tuple[int, str, str, dict[str, Any], str]] = [
    (TEAM, "event_timestamp_in_future", "gateway", {"timestamp": "2031-01-01"}, "2023-12-31 12:00:00"),
    (TEAM, "event_timestamp_in_future", "gateway", {"timestamp": "2030-01-01"}, "2024-01-01 10:00:00"),
    (
        TEAM,
        "cannot_merge_already_identified",
        "processors",
        {"target": "bob", "source": "alice"},
        "2024-01-02 09:00:00",
    ),
    (TEAM, "event_timestamp_in_future", "gateway", {"timestamp": "2030-06-01"}, "2024-01-03 12:00:00"),
    (TEAM, "event_timestamp_in_future", "gateway", {"timestamp": "2030-02-01"}, "2024-01-02 11:00:00"),
    (TEAM, "ignored_invalid_timestamp", "gateway", {"timestamp": "yesterday"}, "2024-01-04 08:00:00"),
    (OTHER_TEAM, "group_key_too_long", "processors", {"group_type": "company", "length": 500}, "2024-01-02 08:00:00"),
]

WEEK_0 = {"team_id": str(TEAM), "date_from": "2024-01-01", "date_to": "2024-01-07"}
JANUARY = {"team_id": str(TEAM), "date_from": "2024-01-01", "date_to": "2024-01-31"}
FUNNEL = {
    **WEEK_0,
    "window_seconds": "86400",
    "step_1": "$pageview",
    "step_2": "signed_up",
    "step_3": "purchase",
}


def uuid_of(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def ts(text: str) -> str:
    return text if "." in text else f"{text}.000000"


# ---------------------------------------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)
_SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_PARAM = re.compile(r"\{(\w+):[^{}]+\}")


def doc_queries() -> dict[str, str]:
    """``"<section>.<n>"`` -> the n-th ```sql block under the numbered ``## <section>.`` heading."""
    text = DOC.read_text(encoding="utf-8")
    starts = [(m.start(), m.group(1)) for m in _HEADING.finditer(text)]
    assert starts, "docs/sql.md has no numbered sections"
    assert not _SQL_BLOCK.findall(text[: starts[0][0]]), "sql blocks must sit under a numbered section"
    queries: dict[str, str] = {}
    for i, (start, number) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        for n, sql in enumerate(_SQL_BLOCK.findall(text[start:end]), 1):
            queries[f"{number}.{n}"] = sql.strip()
    assert len(queries) == len(_SQL_BLOCK.findall(text)), "an unterminated or unexpected ```sql block"
    return queries


QUERIES = doc_queries()


# ---------------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------------


class Seeder:
    def __init__(self, store: ServerStore) -> None:
        self.store, self.offset = store, 0

    def insert(self, table: str, row: dict[str, Any], columns: tuple[str, ...], timestamp_ms: int) -> None:
        """One row as its own Kafka message and its own insert (its own part), like the sink would."""
        assert tuple(row) == columns
        value = json.dumps(row, ensure_ascii=False).encode()
        self.store.insert(
            table, [KafkaRow(value=value, timestamp_ms=timestamp_ms, offset=self.offset, partition=0)], dedup_token=None
        )
        self.offset += 1


def seed(store: ServerStore) -> None:
    for table in ("events", "person", "person_distinct_id", "person_distinct_id_overrides", "ingestion_warnings"):
        # Keep every inserted part apart, so duplicates and old versions stay visible to the queries.
        store.execute(f"SYSTEM STOP MERGES {table}")
    seeder = Seeder(store)
    base_ms = 1_704_067_200_000  # 2024-01-01 00:00:00 UTC
    for n, team, distinct_id, event, when, person in EVENTS:
        row = event_row(
            uuid=uuid_of(n),
            event=event,
            properties={"$session_id": f"s-{distinct_id}", "$lib": "web"},
            timestamp=ts(when),
            team_id=team,
            distinct_id=distinct_id,
            created_at=ts(when),
            person_id=person,
            person_properties={},
        )
        seeder.insert("events", row, EVENT_ROW_COLUMNS, base_ms + n * 1000)
        if n == DUPLICATED:  # re-sent later: a new Kafka timestamp and offset, the same row
            seeder.insert("events", row, EVENT_ROW_COLUMNS, base_ms + 3_600_000)
    for i, (pid, created_at, team, props, identified, deleted, version) in enumerate(PERSONS):
        row = {
            "id": pid,
            "created_at": ts(created_at),
            "team_id": team,
            "properties": json.dumps(props),
            "is_identified": identified,
            "is_deleted": deleted,
            "version": version,
        }
        seeder.insert("person", row, PERSON_ROW_COLUMNS, base_ms + i * 1000)
    for i, (team, distinct_id, pid, deleted, version) in enumerate(DISTINCT_IDS):
        row = {"team_id": team, "distinct_id": distinct_id, "person_id": pid, "is_deleted": deleted, "version": version}
        seeder.insert("person_distinct_id", row, DISTINCT_ID_ROW_COLUMNS, base_ms + i * 1000)
    for i, (team, distinct_id, pid, deleted, version) in enumerate(OVERRIDES):
        row = override_row(team, distinct_id, pid, version, is_deleted=deleted)
        seeder.insert("person_distinct_id_overrides", row, OVERRIDE_ROW_COLUMNS, base_ms + i * 1000)
    for i, (team, type_, source, details, when) in enumerate(WARNINGS):
        row = warning_row(team, type_, source, details, ts(when))
        seeder.insert("ingestion_warnings", row, ("team_id", "type", "source", "details", "timestamp"), base_ms + i)


@pytest.fixture(scope="module")
def store(clickhouse_server: str) -> Iterator[ServerStore]:
    s = ServerStore(StoreURL.parse(f"{clickhouse_server}/eventpipe_test_sql_docs_{uuid.uuid4().hex[:8]}"))
    try:
        migrate(s)
        seed(s)
        yield s
    finally:
        s.execute(f"DROP DATABASE IF EXISTS `{s.url.database}`")
        s.close()


def run(store: ServerStore, key: str, params: dict[str, str]) -> list[tuple[Any, ...]]:
    sql = QUERIES[key]
    assert set(_PARAM.findall(sql)) == set(params), f"query {key} takes exactly these parameters"
    # Exactly as `eventpipe sql` runs it: readonly=1 and the CLI's limits.
    result = readonly.run(store.url, sql, params)
    return [tuple(readonly.as_text(v, t) for v, t in zip(row, result.types, strict=True)) for row in result.rows]


# ---------------------------------------------------------------------------------------------------------------------
# The document's shape
# ---------------------------------------------------------------------------------------------------------------------


def test_every_query_of_the_document_is_checked() -> None:
    assert sorted(QUERIES) == ["1.1", "2.1", "3.1", "4.1", "5.1", "6.1", "6.2", "7.1", "8.1"]


@pytest.mark.parametrize("key", sorted(QUERIES))
def test_queries_take_user_input_as_parameters_only(key: str) -> None:
    sql = QUERIES[key]
    assert "team_id = {team_id:Int64}" in sql
    # No value spliced in: the only quoted literals are fixed names (JSON keys), never a team, day or id.
    for literal in re.findall(r"'([^']*)'", sql):
        assert literal in {"email", "plan"}, f"literal {literal!r} in query {key}"
    assert not re.search(r"%\(|\{\w+\}", sql), "Python-style placeholders instead of {name:Type}"


def test_the_seed_exercises_merges_and_duplicates(store: ServerStore) -> None:
    # Without resolving ids, 1 Jan has three "persons" (X, A, B) and signed_up is counted three times.
    naive = store.query(
        "SELECT uniqExact(person_id) FROM events WHERE team_id = {t:Int64} AND toDate(timestamp) = {d:Date}",
        {"t": "1", "d": "2024-01-01"},
    ).rows
    assert naive == [(3,)]
    copies = store.query("SELECT count() FROM events WHERE event = 'signed_up' AND team_id = 1").rows
    assert copies == [(4,)]  # alice twice, bob, dan
    assert store.query("SELECT count() FROM events FINAL WHERE event = 'signed_up' AND team_id = 1").rows == [(3,)]


# ---------------------------------------------------------------------------------------------------------------------
# The answers
# ---------------------------------------------------------------------------------------------------------------------


def test_daily_active_users_count_a_merged_person_once(store: ServerStore) -> None:
    assert run(store, "1.1", WEEK_0) == [
        ("2024-01-01", 2),  # anon-1 + alice = A, bob
        ("2024-01-02", 3),  # A (both ids), carol, guest-9 (personless: its own stable id)
        ("2024-01-03", 1),
        ("2024-01-04", 0),
        ("2024-01-05", 0),
        ("2024-01-06", 0),
        ("2024-01-07", 1),  # carol at 23:59:59.5 UTC; bob's 31 Dec event is outside
    ]
    assert run(store, "1.1", {**WEEK_0, "team_id": str(OTHER_TEAM), "date_to": "2024-01-03"}) == [
        ("2024-01-01", 1),
        ("2024-01-02", 1),
        ("2024-01-03", 0),
    ]


def test_top_events_count_a_duplicated_event_once(store: ServerStore) -> None:
    # Counting the copy, signed_up (3) would come before purchase.
    assert run(store, "2.1", {**WEEK_0, "limit": "3"}) == [("$pageview", 7), ("purchase", 2), ("signed_up", 2)]
    assert run(store, "2.1", {**WEEK_0, "limit": "10"})[-1] == ("$identify", 1)
    assert run(store, "2.1", {**JANUARY, "team_id": str(OTHER_TEAM), "limit": "10"}) == [
        ("$pageview", 2),
        ("purchase", 1),
        ("signed_up", 1),
    ]


def test_funnel_follows_a_person_across_the_merge(store: ServerStore) -> None:
    # A: page view as anon-1, signed up and bought as alice the same morning: 3 steps. B: bought 48.5 h
    # after the page view, outside the day: 2. carol and guest-9: 1. dan started in week 1: not counted.
    assert run(store, "3.1", FUNNEL) == [(4, 2, 1)]
    assert run(store, "3.1", {**FUNNEL, "window_seconds": str(49 * 3600)}) == [(4, 2, 2)]  # B's purchase fits
    assert run(store, "3.1", {**FUNNEL, "team_id": str(OTHER_TEAM)}) == [(1, 1, 1)]


def test_weekly_retention(store: ServerStore) -> None:
    # Week 0: A, B, C, guest-9. Week 1: A, C (and dan, who is not in the cohort). Week 2: B (skipped week 1), A.
    assert run(store, "4.1", {"team_id": str(TEAM), "cohort_start": "2024-01-01"}) == [(4, 2, 2)]
    # From week 1 on: A, C, D; then A only (carol and dan did not come back, bob skipped week 1's cohort).
    assert run(store, "4.1", {"team_id": str(TEAM), "cohort_start": "2024-01-08"}) == [(3, 1, 0)]


def test_events_per_person_across_merged_ids(store: ServerStore) -> None:
    assert run(store, "5.1", {**JANUARY, "limit": "4"}) == [
        (P_A, ["alice", "anon-1"], 8, "2024-01-01 08:00:00.000000", "2024-01-18 10:00:00.000000"),
        (P_B, ["bob"], 4, "2024-01-01 08:30:00.000000", "2024-01-16 10:00:00.000000"),
        (P_C, ["carol"], 3, "2024-01-02 14:00:00.000000", "2024-01-10 10:00:00.000000"),
        (P_D, ["dan"], 2, "2024-01-08 10:00:00.000000", "2024-01-08 10:05:00.000000"),
    ]
    everyone = run(store, "5.1", {**JANUARY, "limit": "100"})
    assert everyone[-1] == (GUEST, ["guest-9"], 1, "2024-01-02 15:00:00.000000", "2024-01-02 15:00:00.000000")
    assert P_X not in {row[0] for row in everyone}


def test_latest_person_properties(store: ServerStore) -> None:
    # X was merged into A and is deleted; dan's newest version wins although it was stored first.
    assert run(store, "6.1", {"team_id": str(TEAM)}) == [
        (P_A, "2023-12-20 10:00:00.000000", 1, "alice@example.com", "pro"),
        (P_B, "2024-01-01 08:30:00.000000", 1, "bob@example.com", "free"),
        (P_C, "2024-01-02 14:00:00.000000", 0, "carol@example.com", ""),
        (P_D, "2024-01-08 10:00:00.000000", 1, "dan@example.com", "trial"),
    ]


def test_person_behind_a_distinct_id(store: ServerStore) -> None:
    assert run(store, "6.2", {"team_id": str(TEAM), "distinct_id": "anon-1"}) == [
        ("anon-1", P_A, "alice@example.com", "pro")
    ]
    assert run(store, "6.2", {"team_id": str(OTHER_TEAM), "distinct_id": "alice"}) == [
        ("alice", P_T2, "alice@other.example", "enterprise")
    ]
    assert run(store, "6.2", {"team_id": str(TEAM), "distinct_id": "guest-9"}) == []
    # A value that would break out of a spliced string is just a distinct id nobody has.
    assert run(store, "6.2", {"team_id": str(TEAM), "distinct_id": "x' OR '1'='1"}) == []


def test_ingestion_warnings_by_type(store: ServerStore) -> None:
    rows = run(store, "7.1", WEEK_0)
    assert [row[:5] for row in rows] == [
        ("event_timestamp_in_future", "gateway", 3, "2024-01-01 10:00:00.000000", "2024-01-03 12:00:00.000000"),
        (
            "cannot_merge_already_identified",
            "processors",
            1,
            "2024-01-02 09:00:00.000000",
            "2024-01-02 09:00:00.000000",
        ),
        ("ignored_invalid_timestamp", "gateway", 1, "2024-01-04 08:00:00.000000", "2024-01-04 08:00:00.000000"),
    ]
    assert [json.loads(row[5]) for row in rows] == [
        {"timestamp": "2030-06-01"},
        {"target": "bob", "source": "alice"},
        {"timestamp": "yesterday"},
    ]


def test_overridden_ids_resolve_to_their_new_person(store: ServerStore) -> None:
    # anon-1's page view of 1 Jan 08:00 is stored with X, its override names A: it counts for A.
    stored = store.query("SELECT toString(person_id) FROM events WHERE uuid = {u:UUID}", {"u": uuid_of(1)}).rows
    assert stored == [(P_X,)]
    people = {row[0]: row[1] for row in run(store, "5.1", {**JANUARY, "limit": "100"})}
    assert people[P_A] == ["alice", "anon-1"]
    assert people[P_B] == ["bob"]  # the deleted override of bob is ignored
    assert P_X not in people and len(people) == 5


def test_events_still_to_rewrite(store: ServerStore) -> None:
    # One of anon-1's two events carries X; bob's override is deleted, so he is not listed.
    assert run(store, "8.1", {"team_id": str(TEAM)}) == [("anon-1", P_A, 1)]
    assert run(store, "8.1", {"team_id": str(OTHER_TEAM)}) == []
