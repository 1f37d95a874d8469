"""Numbered, idempotent migrations: the DDL of every table, rendered for a :class:`Dialect`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clickhouse.dialect import Dialect
from eventpipe.contract import EVENT_ROW_COLUMNS, KAFKA_COLUMNS, WARNING_ROW_COLUMNS

MIGRATIONS_TABLE = "eventpipe_migrations"


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    render: Callable[[Dialect], list[str]]


def _events(d: Dialect) -> list[str]:
    ts = d.datetime64()
    return [
        f"""CREATE TABLE IF NOT EXISTS events
(
    uuid UUID,
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
    _partition UInt64
)
ENGINE = ReplacingMergeTree(_timestamp)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, toDate(timestamp), event, cityHash64(distinct_id), {d.hash_uuid("uuid")})
SAMPLE BY cityHash64(distinct_id){d.mergetree_settings()}"""
    ]


def _warnings(d: Dialect) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS ingestion_warnings
(
    team_id Int64,
    type String,
    source String,
    details String{d.codec("ZSTD(3)")},
    timestamp {d.datetime64()},
    _timestamp DateTime,
    _offset UInt64,
    _partition UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, timestamp){d.mergetree_settings()}"""
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events", _events),
    Migration(2, "ingestion_warnings", _warnings),
)

# Columns the sink writes per table, in order: the contract's row columns, then the Kafka coordinates.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": EVENT_ROW_COLUMNS + KAFKA_COLUMNS,
    "ingestion_warnings": WARNING_ROW_COLUMNS + KAFKA_COLUMNS,
}


def migrations_table_ddl() -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (number UInt32, name String, applied_at DateTime) "
        "ENGINE = MergeTree ORDER BY number"
    )


def pending(applied: set[int]) -> list[Migration]:
    return [m for m in MIGRATIONS if m.number not in applied]
