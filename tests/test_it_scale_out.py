"""Scale-out: two gateway processes and two processor workers on 4-partition topics, exact counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient

from tests.stack import KAFKA, Stack, poll

EVENTS = 6_000


def test_two_gateways_two_workers_exact_counts(kafka: str, clickhouse_server: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path, processors=2).start()
    try:
        second = stack.add_gateway()
        api_key = stack.create_team("scale-out")

        async def load() -> None:
            async with aiohttp.ClientSession() as session:

                async def send(i: int) -> None:
                    base = stack.url if i % 2 == 0 else second  # alternate between the gateways
                    batch = [
                        {"event": "scaled", "distinct_id": f"user-{(i * 100 + j) % 997}", "properties": {"i": i}}
                        for j in range(100)
                    ]
                    async with session.post(f"{base}/batch/", json={"api_key": api_key, "batch": batch}) as r:
                        assert r.status == 200, await r.text()

                await asyncio.gather(*(send(i) for i in range(EVENTS // 100)))

        asyncio.run(load())

        async def partitions() -> int:
            admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
            await admin.start()
            try:
                described = await admin.describe_topics([f"{stack.prefix}events_raw"])
                return len(described[0]["partitions"])
            finally:
                await admin.close()

        assert asyncio.run(partitions()) == 4

        def counts() -> tuple[int, int, int] | None:
            row = stack.sql("SELECT count() AS n, uniqExact(uuid) AS u, uniqExact(distinct_id) AS d FROM events FINAL")[
                0
            ]
            got = (int(row["n"]), int(row["u"]), int(row["d"]))
            return got if got[1] == EVENTS else None

        # The processors are at-least-once: a rebalance while the second worker joins may re-emit rows,
        # which the events table (ReplacingMergeTree on uuid) collapses; FINAL gives the exact count.
        n, unique, distinct_ids = poll(counts, timeout=240, interval=1, what="every event in ClickHouse")
        assert (n, unique, distinct_ids) == (EVENTS, EVENTS, 997)
        persons = stack.sql("SELECT count() AS n FROM person_distinct_id_current")[0]
        assert int(persons["n"]) == 997  # one mapping per distinct id, whichever worker saw it
    finally:
        stack.close()
