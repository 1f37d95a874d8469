"""Numbered, idempotent migrations: the DDL of every table, rendered for a :class:`Dialect`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clickhouse.dialect import Dialect
from eventpipe.contract import (
    DISTINCT_ID_ROW_COLUMNS,
    EVENT_ROW_COLUMNS,
    GROUP_ROW_COLUMNS,
    KAFKA_COLUMNS,
    OVERRIDE_ROW_COLUMNS,
    PERSON_ROW_COLUMNS,
    WARNING_ROW_COLUMNS,
)

MIGRATIONS_TABLE = "eventpipe_migrations"


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    render: Callable[[Dialect], list[str]]


def _events(d: Dialect) -> list[str]:
    ts = d.datetime64()
    columns = f"""    uuid UUID,
    event String,
    properties String{d.codec("ZSTD(3)")},
    timestamp {ts},
    team_id Int64,
    distinct_id String,
    elements_chain String,
    created_at {ts},
    person_id UUID,
    person_properties String{d.codec("ZSTD(3)")},
    `$group_0` String,
    `$group_1` String,
    `$group_2` String,
    `$group_3` String,
    `$group_4` String,
    `$session_id` String MATERIALIZED {d.json_string("properties", "$session_id")},
    `$window_id` String MATERIALIZED {d.json_string("properties", "$window_id")},
    _timestamp DateTime,
    _offset UInt64,
    _partition UInt64"""
    tail = f"""PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, toDate(timestamp), event, cityHash64(distinct_id), {d.hash_uuid("uuid")})
SAMPLE BY cityHash64(distinct_id)"""
    # Sharded by distinct_id: a person's events stay on one shard (and a re-sent event with them).
    return d.create_table("events", columns, "ReplacingMergeTree(_timestamp)", tail, "cityHash64(distinct_id)")


def _warnings(d: Dialect) -> list[str]:
    columns = f"""    team_id Int64,
    type String,
    source String,
    details String{d.codec("ZSTD(3)")},
    timestamp {d.datetime64()},
    _timestamp DateTime,
    _offset UInt64,
    _partition UInt64"""
    tail = """PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, timestamp)"""
    return d.create_table("ingestion_warnings", columns, "MergeTree", tail, "rand()")


KAFKA_COLUMNS_DDL = """    _timestamp DateTime,
    _offset UInt64,
    _partition UInt64"""


def _person(d: Dialect) -> list[str]:
    columns = f"""    id UUID,
    created_at {d.datetime64()},
    team_id Int64,
    properties String{d.codec("ZSTD(3)")},
    is_identified Int8,
    is_deleted Int8,
    version UInt64,
{KAFKA_COLUMNS_DDL}"""
    # The current state of each person: the row with the highest version, deleted persons dropped.
    q = """SELECT team_id, id, argMax(created_at, version) AS created_at, argMax(properties, version) AS properties,
       argMax(is_identified, version) AS is_identified, max(version) AS latest_version"""
    current = f"{q}\nFROM {d.table('person')}\nGROUP BY team_id, id\nHAVING argMax(is_deleted, version) = 0"
    return [
        # Sharded by id: every version of a person on one shard, so ReplacingMergeTree and argMax see all.
        *d.create_table("person", columns, "ReplacingMergeTree(version)", "ORDER BY (team_id, id)", d.hash_uuid("id")),
        d.create_view("person_current", current),
    ]


def _person_distinct_id(d: Dialect) -> list[str]:
    columns = f"""    team_id Int64,
    distinct_id String,
    person_id UUID,
    is_deleted Int8,
    version Int64,
{KAFKA_COLUMNS_DDL}"""
    return [
        *d.create_table(
            "person_distinct_id",
            columns,
            "ReplacingMergeTree(version)",
            "ORDER BY (team_id, distinct_id)",
            "cityHash64(distinct_id)",
        ),
        # The current person of every distinct id (argMax by version), the mapping analytics join on.
        d.create_view(
            "person_distinct_id_current",
            f"""SELECT team_id, distinct_id, argMax(person_id, version) AS person_id, max(version) AS latest_version
FROM {d.table("person_distinct_id")}
GROUP BY team_id, distinct_id
HAVING argMax(is_deleted, version) = 0""",
        ),
    ]


def _groups(d: Dialect) -> list[str]:
    columns = f"""    group_type_index UInt8,
    group_key String,
    created_at {d.datetime64()},
    team_id Int64,
    group_properties String{d.codec("ZSTD(3)")},
    version Int64,
{KAFKA_COLUMNS_DDL}"""
    return d.create_table(
        "groups",
        columns,
        "ReplacingMergeTree(version)",
        "ORDER BY (team_id, group_type_index, group_key)",
        "cityHash64(group_key)",
    )


OVERRIDES_TABLE = "person_distinct_id_overrides"


def _overrides(d: Dialect) -> list[str]:
    """Distinct ids a merge re-pointed, and their new person: what queries resolve events through until
    ``eventpipe squash-overrides`` has rewritten the events' person_id (clickhouse/squash.py)."""
    columns = f"""    team_id Int64,
    distinct_id String,
    person_id UUID,
    is_deleted Int8,
    version Int64,
{KAFKA_COLUMNS_DDL}"""
    return [
        # Sharded like person_distinct_id and events (cityHash64(distinct_id)): every version of an
        # override on one shard, next to the events it overrides.
        *d.create_table(
            OVERRIDES_TABLE,
            columns,
            "ReplacingMergeTree(version)",
            "ORDER BY (team_id, distinct_id)",
            "cityHash64(distinct_id)",
        ),
        # The live override of each distinct id (argMax by version, deleted ones dropped): the
        # right-hand side of the events -> person join in docs/sql.md.
        d.create_view(
            f"{OVERRIDES_TABLE}_current",
            f"""SELECT team_id, distinct_id, argMax(person_id, version) AS person_id, max(version) AS latest_version
FROM {d.table(OVERRIDES_TABLE)}
GROUP BY team_id, distinct_id
HAVING argMax(is_deleted, version) = 0""",
        ),
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events", _events),
    Migration(2, "ingestion_warnings", _warnings),
    Migration(3, "person", _person),
    Migration(4, "person_distinct_id", _person_distinct_id),
    Migration(5, "groups", _groups),
    Migration(6, "person_distinct_id_overrides", _overrides),
)

# Columns the sink writes per table, in order: the contract's row columns, then the Kafka coordinates.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": EVENT_ROW_COLUMNS + KAFKA_COLUMNS,
    "ingestion_warnings": WARNING_ROW_COLUMNS + KAFKA_COLUMNS,
    "person": PERSON_ROW_COLUMNS + KAFKA_COLUMNS,
    "person_distinct_id": DISTINCT_ID_ROW_COLUMNS + KAFKA_COLUMNS,
    "groups": GROUP_ROW_COLUMNS + KAFKA_COLUMNS,
    OVERRIDES_TABLE: OVERRIDE_ROW_COLUMNS + KAFKA_COLUMNS,
}


def migrations_table_ddl(d: Dialect | None = None) -> str:
    return (d or Dialect()).create_migrations_table(MIGRATIONS_TABLE)


def pending(applied: set[int]) -> list[Migration]:
    return [m for m in MIGRATIONS if m.number not in applied]
