"""Pure unit tests of the ClickHouse side free of I/O: batching, dialects, DDL, the read-only check."""

from __future__ import annotations

import re

import pytest

from clickhouse import batch as batch_mod
from clickhouse.batch import PartitionBuffer, dedup_token
from clickhouse.dialect import MODERN, Dialect, parse_version
from clickhouse.schema import MIGRATIONS, TABLE_COLUMNS, migrations_table_ddl, pending
from clickhouse.store import _TOKEN, KafkaRow, json_each_row
from eventpipe.contract import (
    EVENT_ROW_COLUMNS,
    KAFKA_COLUMNS,
    OVERRIDE_ROW_COLUMNS,
    WARNING_ROW_COLUMNS,
    Topics,
    override_row,
)

OLD = Dialect((18, 16))
NEW = Dialect((26, 9))


def row(offset: int, partition: int = 0) -> KafkaRow:
    return KafkaRow(
        value=b'{"n": %d}' % offset, timestamp_ms=1_700_000_000_000 + offset, offset=offset, partition=partition
    )


def filled(n: int, opened_at: float = 100.0, first_offset: int = 0) -> PartitionBuffer:
    buf = PartitionBuffer("t", 0)
    for i in range(n):
        buf.add(row(first_offset + i), opened_at + i * 0.001)
    return buf


# ---------------------------------------------------------------------------------------------------------------------
# PartitionBuffer / dedup_token
# ---------------------------------------------------------------------------------------------------------------------


def test_add_opens_the_window_on_the_first_row() -> None:
    buf = PartitionBuffer("t", 3)
    buf.add(row(0), 50.0)
    buf.add(row(1), 60.0)
    assert buf.opened_at == 50.0
    assert [r.offset for r in buf.rows] == [0, 1]


@pytest.mark.parametrize(
    ("rows", "now", "max_rows", "max_seconds", "due"),
    [
        (0, 1e9, 1, 0.0, False),  # an empty buffer is never due
        (1, 100.0, 10, 1.0, False),
        (9, 100.5, 10, 1.0, False),
        (10, 100.0, 10, 1.0, True),  # by rows
        (11, 100.0, 10, 1.0, True),
        (1, 101.0, 10, 1.0, True),  # by age, boundary inclusive
        (1, 100.999, 10, 1.0, False),
        (1, 500.0, 10, 1.0, True),
        (1, 100.0, 10, 0.0, True),  # zero wait: always due
        (1, 100.0, 1, 60.0, True),
    ],
)
def test_due(rows: int, now: float, max_rows: int, max_seconds: float, due: bool) -> None:
    buf = PartitionBuffer("t", 0)
    for i in range(rows):
        buf.add(row(i), 100.0 + i * 0.001)  # the window opens with the first row, at 100.0
    assert buf.due(now, max_rows, max_seconds) is due


def test_take_everything_empties_the_buffer() -> None:
    buf = filled(5)
    taken = buf.take(10)
    assert [r.offset for r in taken] == [0, 1, 2, 3, 4]
    assert buf.rows == []
    assert not buf.due(1e12, 1, 0.0)


def test_take_in_offset_order_and_restart_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_mod.time, "monotonic", lambda: 777.0)
    buf = filled(25)
    assert [r.offset for r in buf.take(10)] == list(range(10))
    assert [r.offset for r in buf.take(10)] == list(range(10, 20))
    assert buf.opened_at == 777.0  # left-over rows start a fresh window
    assert [r.offset for r in buf.rows] == list(range(20, 25))
    assert [r.offset for r in buf.take(10)] == list(range(20, 25))
    assert buf.take(10) == []


def test_add_after_take_reopens_the_window() -> None:
    buf = filled(3, opened_at=10.0)
    buf.take(3)
    buf.add(row(3), 99.0)
    assert buf.opened_at == 99.0


def test_dedup_token_names_the_offset_range() -> None:
    rows = [row(i) for i in range(100, 150)]
    assert dedup_token("eventpipe_clickhouse_events", 2, rows) == "eventpipe_clickhouse_events:2:100-149"
    assert dedup_token("t", 0, [row(7)]) == "t:0:7-7"


def test_dedup_token_is_deterministic() -> None:
    a = [row(i) for i in range(10, 20)]
    b = [KafkaRow(b"{}", 0, i, 0) for i in range(10, 20)]  # same offsets re-read after a crash, other payload
    assert dedup_token("t", 1, a) == dedup_token("t", 1, list(a)) == dedup_token("t", 1, b)


@pytest.mark.parametrize(
    ("args_a", "args_b"),
    [
        (("t", 0, (0, 9)), ("t", 0, (0, 10))),
        (("t", 0, (0, 9)), ("t", 0, (1, 9))),
        (("t", 0, (0, 9)), ("t", 1, (0, 9))),
        (("t", 0, (0, 9)), ("u", 0, (0, 9))),
    ],
)
def test_dedup_token_differs_per_batch(args_a: tuple, args_b: tuple) -> None:  # type: ignore[type-arg]
    def token(topic: str, partition: int, span: tuple[int, int]) -> str:
        return dedup_token(topic, partition, [row(span[0]), row(span[1])])

    assert token(*args_a) != token(*args_b)


@pytest.mark.parametrize("prefix", ["eventpipe_", "test-1.a_", ""])
def test_dedup_token_passes_the_store_check(prefix: str) -> None:
    topics = Topics(prefix)
    for topic in (topics.events, topics.ingestion_warnings):
        assert _TOKEN.match(dedup_token(topic, 3, [row(0), row(2**40)]))


# ---------------------------------------------------------------------------------------------------------------------
# Dialect
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("18.16.1", (18, 16)),
        ("26.9.1.1", (26, 9)),
        ("22.2", (22, 2)),
        ("22", (22, 0)),
        (" 23.8.2.7 \n", (23, 8)),
    ],
)
def test_parse_version(text: str, version: tuple[int, int]) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(
    ("version", "modern"),
    [((18, 16), False), ((22, 1), False), (MODERN, True), ((22, 3), True), ((26, 9), True), ((100, 0), True)],
)
def test_modern_threshold(version: tuple[int, int], modern: bool) -> None:
    d = Dialect(version)
    assert d.modern is modern
    assert d.supports_dedup_token is modern


def test_default_dialect_is_modern() -> None:
    assert Dialect().modern


@pytest.mark.parametrize(
    ("dialect", "datetime64", "codec", "hash_uuid", "json_string", "settings"),
    [
        (OLD, "DateTime", "", "cityHash64(toString(uuid))", "visitParamExtractString(properties, '$k')", ""),
        (
            NEW,
            "DateTime64(6, 'UTC')",
            " CODEC(ZSTD(3))",
            "cityHash64(uuid)",
            "JSONExtractString(properties, '$k')",
            " SETTINGS non_replicated_deduplication_window = 1000",
        ),
    ],
)
def test_dialect_rendering(
    dialect: Dialect, datetime64: str, codec: str, hash_uuid: str, json_string: str, settings: str
) -> None:
    assert dialect.datetime64() == datetime64
    assert dialect.codec("ZSTD(3)") == codec
    assert dialect.hash_uuid("uuid") == hash_uuid
    assert dialect.json_string("properties", "$k") == json_string
    assert dialect.mergetree_settings() == settings


# ---------------------------------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------------------------------


def ddl(dialect: Dialect, table: str) -> str:
    """The CREATE TABLE statement of ``table`` among all migrations."""
    found = [
        s
        for m in MIGRATIONS
        for s in m.render(dialect)
        if re.match(rf"CREATE TABLE IF NOT EXISTS {re.escape(table)}\s", s)
    ]
    assert len(found) == 1, table
    return found[0]


def columns(statement: str) -> dict[str, str]:
    body = statement.split("(", 1)[1].split("\n)\nENGINE", 1)[0]
    out = {}
    for line in body.strip().splitlines():
        m = re.match(r"\s*`?([^`\s]+)`?\s+(.*?),?$", line)
        assert m, line
        out[m.group(1)] = m.group(2)
    return out


def test_migrations_are_numbered_in_order() -> None:
    numbers = [m.number for m in MIGRATIONS]
    assert numbers == sorted(numbers) == list(range(1, len(numbers) + 1))
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


@pytest.mark.parametrize("dialect", [OLD, NEW], ids=["18.16", "26.9"])
def test_events_ddl_has_every_contract_column(dialect: Dialect) -> None:
    cols = columns(ddl(dialect, "events"))
    for name in EVENT_ROW_COLUMNS + KAFKA_COLUMNS:
        assert name in cols, name
    assert list(cols)[: len(EVENT_ROW_COLUMNS)] == list(EVENT_ROW_COLUMNS)
    assert TABLE_COLUMNS["events"] == EVENT_ROW_COLUMNS + KAFKA_COLUMNS
    assert set(TABLE_COLUMNS["events"]) <= set(cols)


@pytest.mark.parametrize("dialect", [OLD, NEW], ids=["18.16", "26.9"])
def test_warnings_ddl_has_every_contract_column(dialect: Dialect) -> None:
    cols = columns(ddl(dialect, "ingestion_warnings"))
    assert list(cols) == list(WARNING_ROW_COLUMNS + KAFKA_COLUMNS)
    assert TABLE_COLUMNS["ingestion_warnings"] == WARNING_ROW_COLUMNS + KAFKA_COLUMNS


@pytest.mark.parametrize("dialect", [OLD, NEW], ids=["18.16", "26.9"])
@pytest.mark.parametrize("table", sorted(TABLE_COLUMNS))
def test_every_sink_table_has_the_columns_the_sink_writes(dialect: Dialect, table: str) -> None:
    cols = columns(ddl(dialect, table))
    missing = [c for c in TABLE_COLUMNS[table] if c not in cols]
    assert missing == []
    assert TABLE_COLUMNS[table][-len(KAFKA_COLUMNS) :] == KAFKA_COLUMNS


def test_every_sink_topic_has_a_table() -> None:
    assert set(Topics("p_").sink_tables().values()) <= set(TABLE_COLUMNS)


@pytest.mark.parametrize("dialect", [OLD, NEW], ids=["18.16", "26.9"])
def test_overrides_table_is_versioned_per_distinct_id(dialect: Dialect) -> None:
    statement = ddl(dialect, "person_distinct_id_overrides")
    cols = columns(statement)
    assert cols == {
        "team_id": "Int64",
        "distinct_id": "String",
        "person_id": "UUID",
        "is_deleted": "Int8",
        "version": "Int64",
        "_timestamp": "DateTime",
        "_offset": "UInt64",
        "_partition": "UInt64",
    }
    assert "ENGINE = ReplacingMergeTree(version)\nORDER BY (team_id, distinct_id)" in statement
    assert TABLE_COLUMNS["person_distinct_id_overrides"] == OVERRIDE_ROW_COLUMNS + KAFKA_COLUMNS
    (view,) = [s for m in MIGRATIONS for s in m.render(dialect) if "person_distinct_id_overrides_current" in s]
    assert "HAVING argMax(is_deleted, version) = 0" in view
    assert MIGRATIONS[-1].name == "person_distinct_id_overrides"  # appended: existing numbers unchanged


def test_overrides_topic_and_row() -> None:
    topics = Topics("p_")
    assert topics.person_distinct_id_overrides == "p_clickhouse_person_distinct_id_overrides"
    assert topics.sink_tables()[topics.person_distinct_id_overrides] == "person_distinct_id_overrides"
    row = override_row(7, "anon-1", "0a000000-0000-4000-8000-000000000001", 3)
    assert tuple(row) == OVERRIDE_ROW_COLUMNS
    assert row == {
        "team_id": 7,
        "distinct_id": "anon-1",
        "person_id": "0a000000-0000-4000-8000-000000000001",
        "is_deleted": 0,
        "version": 3,
    }
    assert override_row(7, "anon-1", "0a000000-0000-4000-8000-000000000001", 4, is_deleted=1)["is_deleted"] == 1


def test_old_server_rendering() -> None:
    text = "\n".join(s for m in MIGRATIONS for s in m.render(OLD))
    assert "DateTime64" not in text
    assert "CODEC" not in text
    assert "non_replicated_deduplication_window" not in text
    assert "JSONExtract" not in text
    assert "cityHash64(toString(uuid))" in text
    assert "visitParamExtractString(properties, '$session_id')" in text
    cols = columns(ddl(OLD, "events"))
    assert cols["timestamp"] == "DateTime"
    assert cols["created_at"] == "DateTime"
    assert not OLD.supports_dedup_token


def test_modern_rendering() -> None:
    events = ddl(NEW, "events")
    cols = columns(events)
    assert cols["timestamp"] == cols["created_at"] == "DateTime64(6, 'UTC')"
    assert cols["properties"] == "String CODEC(ZSTD(3))"
    assert cols["person_properties"] == "String CODEC(ZSTD(3))"
    assert "cityHash64(uuid))" in events
    assert "toString(uuid)" not in events
    assert events.rstrip().endswith("SETTINGS non_replicated_deduplication_window = 1000")
    assert "JSONExtractString(properties, '$session_id')" in events
    assert columns(ddl(NEW, "ingestion_warnings"))["details"] == "String CODEC(ZSTD(3))"
    assert NEW.supports_dedup_token


@pytest.mark.parametrize("dialect", [OLD, NEW], ids=["18.16", "26.9"])
def test_ddl_is_idempotent_and_well_formed(dialect: Dialect) -> None:
    for migration in MIGRATIONS:
        for statement in migration.render(dialect):
            assert re.match(r"CREATE (TABLE|VIEW|MATERIALIZED VIEW) IF NOT EXISTS ", statement)
            assert statement.count("(") == statement.count(")")
            assert ";" not in statement


def test_migrations_table_and_pending() -> None:
    assert migrations_table_ddl().startswith("CREATE TABLE IF NOT EXISTS eventpipe_migrations")
    assert pending(set()) == list(MIGRATIONS)
    assert pending({1}) == [m for m in MIGRATIONS if m.number != 1]
    assert pending({m.number for m in MIGRATIONS}) == []
    assert pending({99}) == list(MIGRATIONS)


def test_json_each_row_splices_the_kafka_coordinates_into_each_line() -> None:
    rows = [KafkaRow(b'{"a":1}', 1_700_000_000_999, 7, 2), KafkaRow(b' {"b":"x}"}\n', 1_700_000_001_000, 8, 2)]
    assert json_each_row(rows).split("\n") == [
        '{"a":1,"_timestamp":1700000000,"_offset":7,"_partition":2}',
        '{"b":"x}","_timestamp":1700000001,"_offset":8,"_partition":2}',
    ]


@pytest.mark.parametrize("value", [b"{}", b"[1]", b'"s"', b"", b'{"a":1}\n{"b":2}', b'{"a":', b"null"])
def test_json_each_row_refuses_what_is_not_one_json_object(value: bytes) -> None:
    # Refused as a row error (ValueError -> the sink bisects and dead-letters exactly that message),
    # never spliced into zero or two rows.
    with pytest.raises(ValueError, match="offset 3"):
        json_each_row([KafkaRow(b'{"ok":1}', 0, 2, 0), KafkaRow(value, 0, 3, 0)])
