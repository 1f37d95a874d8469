"""The one place that knows ClickHouse versions differ.

Production DDL targets modern ClickHouse (>= 22.2: DateTime64, column codecs, cityHash64 over UUID,
``insert_deduplication_token``). The Debian 18.16 server used in tests lacks all four; this module
renders the nearest equivalent there and every caller asks it instead of checking versions.

It is also the one place that knows about cluster mode (``EVENTPIPE_CLICKHOUSE_CLUSTER``): with a
cluster name every table becomes a Replicated* ``<name>_local`` table created ``ON CLUSTER`` plus a
Distributed table under the name the sink and the queries use; without one the DDL is single-node.
"""

from __future__ import annotations

from dataclasses import dataclass

MODERN = (22, 2)


def parse_version(text: str) -> tuple[int, int]:
    parts = [*text.strip().split("."), "0", "0"][:2]
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class Dialect:
    version: tuple[int, int] = (26, 0)
    # Cluster mode: the <remote_servers> cluster every DDL runs ON, and the database (cluster DDL names
    # it explicitly: ON CLUSTER queries run on the other nodes outside this connection's database).
    cluster: str = ""
    database: str = "default"

    @property
    def modern(self) -> bool:
        return self.version >= MODERN

    def datetime64(self) -> str:
        # 18.16 has no sub-second type: seconds precision there (documented in docs/clickhouse.md).
        return "DateTime64(6, 'UTC')" if self.modern else "DateTime"

    def codec(self, codec: str) -> str:
        return f" CODEC({codec})" if self.modern else ""

    def hash_uuid(self, column: str) -> str:
        return f"cityHash64({column})" if self.modern else f"cityHash64(toString({column}))"

    def json_string(self, column: str, key: str) -> str:
        return f"JSONExtractString({column}, '{key}')" if self.modern else f"visitParamExtractString({column}, '{key}')"

    def mergetree_settings(self) -> str:
        # Plain MergeTree deduplicates re-sent blocks only with a non-replicated window (Replicated*
        # tables of cluster mode deduplicate by default, on 18.16 too).
        return " SETTINGS non_replicated_deduplication_window = 1000" if self.modern and not self.cluster else ""

    @property
    def supports_dedup_token(self) -> bool:
        return self.modern

    # -----------------------------------------------------------------------------------------------
    # DDL: single node, or cluster mode (Replicated* local tables + Distributed tables, ON CLUSTER)
    # -----------------------------------------------------------------------------------------------

    @property
    def insert_settings(self) -> dict[str, int]:
        """Settings of every sink insert. In cluster mode inserts go through Distributed tables, which
        by default (18.16 included) queue the rows on the local disk and acknowledge before any shard
        stored them; synchronous mode acknowledges only once every shard's replica wrote its part."""
        return {"insert_distributed_sync": 1} if self.cluster else {}

    def _on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""

    def table(self, name: str) -> str:
        """How DDL refers to a table: qualified in cluster mode, where DDL runs on every node."""
        return f"{self.database}.{name}" if self.cluster else name

    def create_database(self) -> str:
        return f"CREATE DATABASE IF NOT EXISTS `{self.database}`{self._on_cluster()}"

    def _replicated(self, engine: str, table: str) -> str:
        """``ReplacingMergeTree(v)`` -> ``ReplicatedReplacingMergeTree('<zk path>', '{replica}', v)``."""
        family, _, args = engine.partition("(")
        args = args.rstrip(")")
        path = f"'/clickhouse/tables/{{shard}}/{self.database}.{table}', '{{replica}}'"
        return f"Replicated{family}({path}{', ' + args if args else ''})"

    def create_local_table(self, name: str, columns: str, engine: str, tail: str) -> str:
        """A table stored on this node only (single node), or a Replicated* table on every node of the
        cluster whose replicas within a shard hold the same rows (``{shard}``/``{replica}`` macros)."""
        head = f"CREATE TABLE IF NOT EXISTS {self.table(name)}{self._on_cluster()}\n(\n{columns}\n)\n"
        if not self.cluster:
            return f"{head}ENGINE = {engine}\n{tail}{self.mergetree_settings()}"
        return f"{head}ENGINE = {self._replicated(engine, name)}\n{tail}"

    def create_table(self, name: str, columns: str, engine: str, tail: str, sharding_key: str) -> list[str]:
        """``columns`` are the column lines, ``engine`` a MergeTree-family engine (``MergeTree``,
        ``ReplacingMergeTree(version)``), ``tail`` the PARTITION/ORDER/SAMPLE BY lines. In cluster mode
        the rows live in ``<name>_local`` and ``name`` is a Distributed table over it, sharded by
        ``sharding_key`` (rows that ReplacingMergeTree collapses must share a shard)."""
        if not self.cluster:
            return [self.create_local_table(name, columns, engine, tail)]
        local = f"{name}_local"
        # 18.16 forwards MATERIALIZED columns of a Distributed table in its inserts to the shards, which
        # refuse them ("Cannot insert column ..., because it is MATERIALIZED column"): there the
        # Distributed table computes them as ALIAS columns instead (same values, read from properties).
        distributed_columns = columns if self.modern else columns.replace(" MATERIALIZED ", " ALIAS ")
        return [
            self.create_local_table(local, columns, engine, tail),
            f"CREATE TABLE IF NOT EXISTS {self.table(name)}{self._on_cluster()}\n(\n{distributed_columns}\n)\n"
            f"ENGINE = Distributed({self.cluster}, {self.database}, {local}, {sharding_key})",
        ]

    def create_view(self, name: str, select: str) -> str:
        return f"CREATE VIEW IF NOT EXISTS {self.table(name)}{self._on_cluster()} AS\n{select}"

    # -----------------------------------------------------------------------------------------------
    # Mutations (ALTER TABLE … UPDATE / DELETE), used by `eventpipe squash-overrides`
    # -----------------------------------------------------------------------------------------------

    def alter_table(self, name: str) -> str:
        """``ALTER TABLE <target>`` for a mutation of the table the sink writes as ``name``: in cluster
        mode a Distributed table holds no rows and refuses mutations, so the Replicated ``<name>_local``
        is altered ON CLUSTER (each replica then applies the mutation to its copy)."""
        if not self.cluster:
            return f"ALTER TABLE {name}"
        return f"ALTER TABLE {self.table(name + '_local')}{self._on_cluster()}"

    @property
    def mutation_settings(self) -> dict[str, int]:
        """Wait for a mutation to finish before the ALTER returns: on this server (1), or on every
        replica (2) in cluster mode, so what follows a mutation sees its result everywhere."""
        return {"mutations_sync": 2 if self.cluster else 1}

    def create_migrations_table(self, name: str) -> str:
        """The record of applied migrations. In cluster mode a Replicated table per shard (not
        Distributed): the node the sink talks to and its replicas know what ran; a sink on another shard
        re-runs the (idempotent, IF NOT EXISTS) DDL once and records it there."""
        columns = "(number UInt32, name String, applied_at DateTime)"
        if not self.cluster:
            return f"CREATE TABLE IF NOT EXISTS {name} {columns} ENGINE = MergeTree ORDER BY number"
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table(name)}{self._on_cluster()} {columns} "
            f"ENGINE = {self._replicated('MergeTree', name)} ORDER BY number"
        )
