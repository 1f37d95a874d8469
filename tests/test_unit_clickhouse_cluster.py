"""Cluster-mode DDL rendering (EVENTPIPE_CLICKHOUSE_CLUSTER), free of I/O."""

from __future__ import annotations

import re

import pytest

from clickhouse.dialect import Dialect
from clickhouse.schema import MIGRATIONS, TABLE_COLUMNS, migrations_table_ddl

OLD = Dialect((18, 16), cluster="eventpipe", database="db1")
NEW = Dialect((26, 9), cluster="eventpipe", database="db1")


def rendered(d: Dialect) -> list[str]:
    return [s for m in MIGRATIONS for s in m.render(d)]


def statement(d: Dialect, name: str) -> str:
    found = [s for s in rendered(d) if re.match(rf"CREATE (TABLE|VIEW) IF NOT EXISTS db1\.{name} ", s)]
    assert len(found) == 1, name
    return found[0]


@pytest.mark.parametrize("d", [OLD, NEW], ids=["18.16", "26.9"])
def test_every_statement_runs_on_the_cluster_with_qualified_names(d: Dialect) -> None:
    for sql in [*rendered(d), migrations_table_ddl(d), d.create_database()]:
        assert " ON CLUSTER eventpipe" in sql.splitlines()[0], sql
        assert re.match(r"CREATE (TABLE|VIEW|DATABASE) IF NOT EXISTS `?db1", sql), sql
        assert sql.count("(") == sql.count(")")


@pytest.mark.parametrize("d", [OLD, NEW], ids=["18.16", "26.9"])
@pytest.mark.parametrize("table", sorted(TABLE_COLUMNS))
def test_each_sink_table_is_distributed_over_a_replicated_local_table(d: Dialect, table: str) -> None:
    local = statement(d, f"{table}_local")
    engine = re.search(r"ENGINE = (Replicated\w+)\('/clickhouse/tables/\{shard\}/db1\.(\w+)', '\{replica\}'", local)
    assert engine and engine.group(2) == f"{table}_local", local
    assert "non_replicated_deduplication_window" not in local
    distributed = statement(d, table)
    assert re.search(rf"ENGINE = Distributed\(eventpipe, db1, {table}_local, .+\)$", distributed), distributed
    # Same columns, same order: the sink inserts into the Distributed table by name.
    assert distributed.split("ENGINE")[0].count(",") == local.split("ENGINE")[0].count(",")


def test_engines_and_sharding_keys() -> None:
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db1.events_local', '{replica}', _timestamp)" in (
        statement(OLD, "events_local")
    )
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/db1.ingestion_warnings_local', '{replica}')\n" in (
        statement(OLD, "ingestion_warnings_local")
    )
    assert statement(OLD, "events").endswith("Distributed(eventpipe, db1, events_local, cityHash64(distinct_id))")
    assert statement(OLD, "person").endswith("cityHash64(toString(id)))")  # 18.16: no cityHash64(UUID)
    assert statement(NEW, "person").endswith("cityHash64(id))")


def test_materialized_columns_of_the_distributed_table() -> None:
    # 18.16 refuses inserts through a Distributed table that has MATERIALIZED columns: ALIAS there.
    assert "`$session_id` String ALIAS visitParamExtractString(properties, '$session_id')" in statement(OLD, "events")
    assert "MATERIALIZED" in statement(OLD, "events_local")
    assert "`$session_id` String MATERIALIZED JSONExtractString(properties, '$session_id')" in statement(NEW, "events")


def test_views_read_the_distributed_tables() -> None:
    assert "FROM db1.person\n" in statement(OLD, "person_current")
    assert "FROM db1.person_distinct_id\n" in statement(OLD, "person_distinct_id_current")
    assert "FROM db1.person_distinct_id_overrides\n" in statement(OLD, "person_distinct_id_overrides_current")


def test_overrides_are_sharded_like_their_events() -> None:
    # An override and the events it rewrites live on one shard: both by cityHash64(distinct_id).
    for d in (OLD, NEW):
        assert statement(d, "person_distinct_id_overrides").endswith(
            "Distributed(eventpipe, db1, person_distinct_id_overrides_local, cityHash64(distinct_id))"
        )
        assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db1.person_distinct_id_overrides_local', " in (
            statement(d, "person_distinct_id_overrides_local")
        )


def test_mutations_target_the_replicated_local_tables() -> None:
    # A Distributed table holds no rows: squash-overrides alters <table>_local on every node.
    assert NEW.alter_table("events") == "ALTER TABLE db1.events_local ON CLUSTER eventpipe"
    assert NEW.mutation_settings == {"mutations_sync": 2}
    single = Dialect((26, 9))
    assert single.alter_table("events") == "ALTER TABLE events"
    assert single.mutation_settings == {"mutations_sync": 1}


def test_migrations_table_is_replicated_not_distributed() -> None:
    sql = migrations_table_ddl(OLD)
    assert sql.startswith("CREATE TABLE IF NOT EXISTS db1.eventpipe_migrations ON CLUSTER eventpipe ")
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/db1.eventpipe_migrations', '{replica}')" in sql


def test_insert_settings_and_single_node_unchanged() -> None:
    assert OLD.insert_settings == NEW.insert_settings == {"insert_distributed_sync": 1}
    single = Dialect((18, 16))
    assert single.insert_settings == {}
    assert single.create_database() == "CREATE DATABASE IF NOT EXISTS `default`"
    text = "\n".join(rendered(single))
    assert "ON CLUSTER" not in text and "Replicated" not in text and "Distributed" not in text
