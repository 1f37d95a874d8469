"""The SQL `eventpipe squash-overrides` builds (clickhouse/squash.py), and its runner over a fake store."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest

from clickhouse import squash
from clickhouse.dialect import Dialect
from clickhouse.squash import Override
from clickhouse.store import KafkaRow, Result

SINGLE = Dialect((26, 9))
CLUSTER = Dialect((26, 9), cluster="eventpipe", database="db1")
P1 = "0a000000-0000-4000-8000-000000000001"
P2 = "0b000000-0000-4000-8000-000000000002"


def o(distinct_id: str, team: int = 1, person: str = P1, version: int = 1) -> Override:
    return Override(team, distinct_id, person, version)


# ---------------------------------------------------------------------------------------------------------------------
# quote
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("anon-1", "'anon-1'"),
        ("", "''"),
        ("x' OR '1'='1", "'x\\x27 OR \\x271\\x27=\\x271'"),
        ("back\\slash", "'back\\x5cslash'"),
        ("é", "'\\xc3\\xa9'"),
        ("tab\tnew\nline\x00", "'tab\\x09new\\x0aline\\x00'"),
    ],
)
def test_quote(text: str, literal: str) -> None:
    assert squash.quote(text) == literal


@pytest.mark.parametrize("text", ["'", "\\'", "a'); DROP TABLE events; --", "\\", "\u2028", "🙂"])
def test_quoted_literals_have_no_raw_quote_or_backslash_escape(text: str) -> None:
    inner = squash.quote(text)[1:-1]
    assert "'" not in inner
    assert re.fullmatch(r"([ -&(-\[\]-~]|\\x[0-9a-f]{2})*", inner), inner  # printable, or \xHH


# ---------------------------------------------------------------------------------------------------------------------
# snapshot and batches
# ---------------------------------------------------------------------------------------------------------------------


def test_snapshot_takes_the_latest_live_version_older_than_the_cutoff() -> None:
    sql = squash.snapshot_sql(None, 172800)
    assert "FROM person_distinct_id_overrides\nGROUP BY team_id, distinct_id" in sql
    assert "argMax(person_id, version)" in sql and "max(version) AS latest_version" in sql
    assert "HAVING argMax(is_deleted, version) = 0 AND argMax(_timestamp, version) <= now() - 172800" in sql
    assert sql.endswith("ORDER BY team_id, distinct_id")
    assert "WHERE team_id = 7\n" in squash.snapshot_sql(7, 0)
    assert "WHERE" not in sql


def test_batches_hold_one_team_and_respect_both_bounds() -> None:
    overrides = [o(f"d{i}", team=1) for i in range(5)] + [o("e", team=2)] + [o(f"f{i}", team=3) for i in range(3)]
    got = [[x.distinct_id for x in b] for b in squash.batches(overrides, rows=2)]
    assert got == [["d0", "d1"], ["d2", "d3"], ["d4"], ["e"], ["f0", "f1"], ["f2"]]
    long_ids = [o("x" * 1000 + str(i)) for i in range(10)]
    sized = list(squash.batches(long_ids, rows=100, size=3000))
    assert [len(b) for b in sized] == [2, 2, 2, 2, 2]  # ~1042 bytes each: two fit in 3000
    assert [x for b in sized for x in b] == long_ids
    assert list(squash.batches([])) == []
    assert [len(b) for b in squash.batches([o("huge" * 50_000)], size=10)] == [1]  # one id alone always goes


# ---------------------------------------------------------------------------------------------------------------------
# the mutations
# ---------------------------------------------------------------------------------------------------------------------


def test_rewrite_selects_only_events_whose_person_differs() -> None:
    batch = [o("anon-1", person=P1), o("anon-2", person=P2)]
    expr = f"toUUID(transform(distinct_id, ['anon-1', 'anon-2'], ['{P1}', '{P2}'], toString(person_id)))"
    assert squash.new_person(batch) == expr
    assert squash.stale_events(batch) == f"team_id = 1 AND person_id != {expr}"
    assert squash.rewrite_sql(SINGLE, batch) == (
        f"ALTER TABLE events\nUPDATE person_id = {expr}\nWHERE team_id = 1 AND person_id != {expr}"
    )
    assert squash.count_stale_sql(batch) == f"SELECT count() FROM events WHERE team_id = 1 AND person_id != {expr}"
    assert squash.stale_ids_sql(batch).startswith("SELECT DISTINCT distinct_id FROM events WHERE team_id = 1 AND ")


def test_delete_removes_each_id_up_to_its_snapshot_version_only() -> None:
    sql = squash.delete_sql(SINGLE, [o("anon-1", version=1), o("anon-2", version=7)])
    assert sql == (
        "ALTER TABLE person_distinct_id_overrides\nDELETE WHERE team_id = 1 AND version <= "
        "transform(distinct_id, ['anon-1', 'anon-2'], CAST([1, 7], 'Array(Int64)'), toInt64(-1))"
    )


def test_cluster_mutations_alter_the_local_tables_on_every_node() -> None:
    batch = [o("a")]
    assert squash.rewrite_sql(CLUSTER, batch).startswith("ALTER TABLE db1.events_local ON CLUSTER eventpipe\nUPDATE")
    assert squash.delete_sql(CLUSTER, batch).startswith(
        "ALTER TABLE db1.person_distinct_id_overrides_local ON CLUSTER eventpipe\nDELETE"
    )


def test_a_batch_of_two_teams_is_refused() -> None:
    with pytest.raises(ValueError):
        squash.stale_events([o("a", team=1), o("b", team=2)])


def test_a_full_batch_fits_max_query_size() -> None:
    batch = next(squash.batches([o("i" * 200 + str(n)) for n in range(10_000)]))
    assert len(squash.rewrite_sql(SINGLE, batch)) < 256 * 1024
    assert len(squash.delete_sql(SINGLE, batch)) < 256 * 1024


# ---------------------------------------------------------------------------------------------------------------------
# the runner, over a fake store
# ---------------------------------------------------------------------------------------------------------------------


class FakeStore:
    """Answers the snapshot with ``overrides``, counts with ``stale``; records every mutation."""

    def __init__(self, overrides: list[Override], stale: int = 3, still_stale: Sequence[str] = ()) -> None:
        self.dialect = SINGLE
        self.overrides, self.stale, self.still_stale = overrides, stale, list(still_stale)
        self.executed: list[tuple[str, dict[str, Any] | None]] = []

    def execute(self, sql: str, settings: dict[str, Any] | None = None) -> None:
        self.executed.append((sql, settings))

    def query(self, sql: str, params: dict[str, Any] | None = None) -> Result:
        if sql.startswith("SELECT team_id, distinct_id"):
            rows = [(x.team_id, x.distinct_id, x.person_id, x.version) for x in self.overrides]
            return Result(["team_id", "distinct_id", "person_id", "version"], [], rows)
        if sql.startswith("SELECT count()"):
            return Result(["count()"], ["UInt64"], [(self.stale,)])
        if sql.startswith("SELECT DISTINCT distinct_id"):
            return Result(["distinct_id"], ["String"], [(i,) for i in self.still_stale])
        raise AssertionError(sql)

    def insert(self, table: str, rows: Sequence[KafkaRow], dedup_token: str | None) -> None:
        raise AssertionError("the squash inserts nothing")

    def insert_values(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        raise AssertionError("the squash inserts nothing")

    def close(self) -> None:
        pass


def test_runner_rewrites_then_deletes_per_batch() -> None:
    store = FakeStore([o("a"), o("b"), o("c", team=2)])
    lines: list[str] = []
    report = squash.squash(store, min_age_s=0, batch_rows=10, progress=lines.append)
    kinds = [sql.split("\n")[0:2] for sql, _ in store.executed]
    assert kinds == [
        ["ALTER TABLE events", "UPDATE person_id = toUUID(transform(distinct_id, ['a', 'b'], "
         f"['{P1}', '{P1}'], toString(person_id)))"],
        ["ALTER TABLE person_distinct_id_overrides", kinds[1][1]],
        ["ALTER TABLE events", kinds[2][1]],
        ["ALTER TABLE person_distinct_id_overrides", kinds[3][1]],
    ]  # fmt: skip
    assert {str(s) for _, s in store.executed} == {"{'mutations_sync': 1}"}
    assert (report.overrides, report.squashed, report.kept, report.events, report.batches) == (3, 3, 0, 6, 2)
    assert lines[0] == "3 live overrides older than 0s in 2 batches"
    assert lines[1].startswith("batch 1/2 team 1: 2 overrides squashed, 3 events, 0 kept")


def test_runner_keeps_overrides_of_ids_with_events_stored_during_the_rewrite() -> None:
    store = FakeStore([o("a"), o("b")], still_stale=["b"])
    report = squash.squash(store, min_age_s=0)
    delete = store.executed[-1][0]
    assert "['a']" in delete and "'b'" not in delete
    assert (report.squashed, report.kept) == (1, 1)


def test_runner_skips_the_rewrite_when_events_are_already_right() -> None:
    store = FakeStore([o("a")], stale=0)
    report = squash.squash(store, min_age_s=0)
    assert [sql.split("\n")[0] for sql, _ in store.executed] == ["ALTER TABLE person_distinct_id_overrides"]
    assert (report.squashed, report.events) == (1, 0)


def test_dry_run_changes_nothing() -> None:
    store = FakeStore([o("a"), o("b", team=3)])
    report = squash.squash(store, min_age_s=0, dry_run=True)
    assert store.executed == []
    assert (report.overrides, report.squashed, report.events, report.batches) == (2, 2, 6, 2)


def test_old_servers_are_refused() -> None:
    store = FakeStore([o("a")])
    store.dialect = Dialect((18, 16))
    with pytest.raises(RuntimeError, match=r"22\.2"):
        squash.squash(store)


def test_cli_options() -> None:
    from eventpipe.cli import build_parser

    args = build_parser().parse_args(["squash-overrides", "--team", "4", "--dry-run", "--min-age", "0"])
    assert (args.team, args.dry_run, args.min_age, args.batch, args.every) == (4, True, 0, squash.BATCH_ROWS, None)
    args = build_parser().parse_args(["squash-overrides", "--every", "3600"])
    assert (args.team, args.min_age, args.every) == (None, squash.DEFAULT_MIN_AGE_S, 3600.0)


def test_interval_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventpipe import config

    monkeypatch.delenv("EVENTPIPE_SQUASH_INTERVAL_S", raising=False)
    assert config.load().squash_interval_s == 0.0  # off: one run
    monkeypatch.setenv("EVENTPIPE_SQUASH_INTERVAL_S", "86400")
    assert config.load().squash_interval_s == 86400.0
