"""Cluster mode on a real two-node ClickHouse cluster (deploy/local/clickhouse-cluster.sh: one shard,
two replicas, ZooKeeper): the sink's migrations create Replicated + Distributed tables ON CLUSTER, and
every event captured through the gateway is queryable, exactly once, from either node."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client

from tests.stack import Stack, poll

CLUSTER = "eventpipe"
NODE1 = ("127.0.0.1", int(os.environ.get("EVENTPIPE_LOCAL_CLUSTER_NODE1_PORT", "19100")))
NODE2 = ("127.0.0.1", int(os.environ.get("EVENTPIPE_LOCAL_CLUSTER_NODE2_PORT", "19200")))
USERS, EVENTS_PER_USER = 20, 10  # 200 events


@pytest.fixture(scope="module")
def cluster_nodes() -> tuple[Client, Client]:
    for host, port in (NODE1, NODE2):
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError:
            pytest.fail(
                f"ClickHouse cluster node {host}:{port} is not reachable: run the suite with `make test`, "
                "which starts it (bash deploy/local/clickhouse-cluster.sh start)"
            )
    return Client(host=NODE1[0], port=NODE1[1]), Client(host=NODE2[0], port=NODE2[1])


@pytest.fixture
def cluster_stack(kafka: str, cluster_nodes: tuple[Client, Client], tmp_path: Path) -> Iterator[Stack]:
    s = Stack(
        tmp_path,
        clickhouse_url=f"clickhouse://default@{NODE1[0]}:{NODE1[1]}",
        extra_env={"EVENTPIPE_CLICKHOUSE_CLUSTER": CLUSTER},
    )
    try:
        yield s.start()
    finally:
        s.close()  # DROP DATABASE ... ON CLUSTER (the stack's env names the cluster)
        for node in cluster_nodes:
            assert node.execute(f"SELECT count() FROM system.databases WHERE name = '{s.database}'") == [(0,)]


def one(node: Client, sql: str) -> Any:
    return node.execute(sql)[0][0]


def test_events_through_the_cluster_are_on_both_nodes(
    cluster_stack: Stack, cluster_nodes: tuple[Client, Client]
) -> None:
    node1, node2 = cluster_nodes
    db = cluster_stack.database

    # The sink's migrations made the cluster schema on every node.
    for node in (node1, node2):
        engines = dict(node.execute(f"SELECT name, engine FROM system.tables WHERE database = '{db}'"))
        for table in ("events", "person", "person_distinct_id", "groups", "ingestion_warnings"):
            assert engines[table] == "Distributed", (table, engines)
            assert engines[f"{table}_local"].startswith("Replicated"), (table, engines)
        assert engines["person_current"] == engines["person_distinct_id_current"] == "View"
        assert engines["eventpipe_migrations"] == "ReplicatedMergeTree"

    api_key = cluster_stack.create_team("cluster")
    for u in range(USERS):
        batch = [
            {
                "event": f"e{i % 3}",
                "distinct_id": f"user-{u}",
                "properties": {"$session_id": f"s-{u}", "n": i},
            }
            for i in range(EVENTS_PER_USER)
        ]
        status, body = cluster_stack.post("/batch/", {"api_key": api_key, "batch": batch})
        assert (status, body) == (200, {"status": 1})

    total = USERS * EVENTS_PER_USER
    counts = f"SELECT count(), uniqExact(uuid), uniqExact(distinct_id) FROM {db}.events"
    # Node 1 (the sink's) and node 2 through the Distributed table, and node 2's own replica.
    for node, sql in ((node1, counts), (node2, counts), (node2, counts.replace(".events", ".events_local"))):
        got = poll(lambda n=node, q=sql: (r := n.execute(q)[0]) == (total, total, USERS) and r, 60, 0.2, sql)
        assert got == (total, total, USERS)

    for node in (node1, node2):
        # $session_id is materialized on the local tables and read through the Distributed one.
        assert one(node, f"SELECT count() FROM {db}.events WHERE `$session_id` = 's-3'") == EVENTS_PER_USER
        assert one(node, f"SELECT count() FROM {db}.events WHERE distinct_id = 'user-7'") == EVENTS_PER_USER
        assert node.execute(f"SELECT event, count() FROM {db}.events GROUP BY event ORDER BY event") == [
            ("e0", USERS * 4),
            ("e1", USERS * 3),
            ("e2", USERS * 3),
        ]
        # Every new distinct id got a person (persons and distinct ids arrive through their own topics);
        # the views over the Distributed tables see them all.
        for view in ("person_distinct_id_current", "person_current"):
            poll(lambda n=node, v=view: one(n, f"SELECT count() FROM {db}.{v}") == USERS, 30, 0.2, view)

    # Still exact once the sink has flushed everything else (no late duplicates).
    for node in (node1, node2):
        assert node.execute(counts)[0] == (total, total, USERS)

    # The CLI in cluster mode reads through the same Distributed table.
    rows = cluster_stack.sql("SELECT count() AS n FROM events")
    assert int(rows[0]["n"]) == total
