"""``python -m bench.history``: live capture -> queryable latency with and without a historical backlog.

Three phases on one stack (tests/stack.py: gateway, one processor worker, sink), each sending ``--probes``
single-event captures at ``--probe-rate`` and timing each until ClickHouse returns it:

1. quiet: nothing else;
2. historical: ``--backlog`` events written to ``events_historical`` (what ``eventpipe import`` writes)
   just before the probes;
3. as live: the same backlog written to ``events_raw``, i.e. what a backlog did before it had a topic of
   its own, for comparison.

Printed: p50/p90/p99/max per phase and how many backlog events were still unstored when the last probe
was seen (the backlog was being processed all along). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import ujson
from clickhouse_driver import Client

from eventpipe.importing import to_message
from eventpipe.kafka import producer, topics_for
from gateway.prepare import Limits
from tests.stack import Stack


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _write_backlog(stack: Stack, topic: str, api_key: str, team_id: int, n: int, tag: str) -> float:
    now = datetime.now(UTC)
    limits = Limits(inflated_bytes=2_000_000)
    prod = producer(stack.settings, linger_ms=20)
    await prod.start()
    began = time.monotonic()
    try:
        futures = []
        for i in range(n):
            event = {"event": f"backlog-{tag}", "distinct_id": f"user-{i % 5000}", "timestamp": "2025-06-01T00:00:00Z",
                     "properties": {"i": i, "$current_url": f"https://x.test/{i % 100}"}}  # fmt: skip
            key, value = to_message(event, api_key, team_id, now, limits)
            futures.append(await prod.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await prod.stop()
    return time.monotonic() - began


async def _processed_at(stack: Stack, name: str) -> dict[str, float]:
    """uuid -> when the processors produced its row (the clickhouse_events message's timestamp), of the
    rows of event ``name``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = topics_for(stack.settings).events
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: dict[str, float] = {}
    try:
        parts = [TopicPartition(topic, p) for p in range(stack.settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        while any([await consumer.position(tp) < end[tp] for tp in parts]):
            for messages in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for m in messages:
                    if name.encode() in m.value and (row := ujson.loads(m.value))["event"] == name:
                        out[row["uuid"]] = m.timestamp / 1000
    finally:
        await consumer.stop()
    return out


def _probe(
    stack: Stack, client: Client, api_key: str, team_id: int, name: str, count: int, rate: float
) -> tuple[list[float], list[float]]:
    """Send ``count`` probes at ``rate``; per probe the seconds from the send until a query returns it, and
    until the processors produced its row."""
    sent: dict[str, float] = {}
    wall: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            rows = client.execute(
                "SELECT toString(uuid) FROM events WHERE team_id = %(t)s AND event = %(e)s", {"t": team_id, "e": name}
            )
            now = time.monotonic()
            for (u,) in rows:
                seen.setdefault(u, now)
            if len(seen) >= count:
                done.set()
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _ in range(count):
        u = str(uuid.uuid4())
        sent[u], wall[u] = time.monotonic(), time.time()
        status, body = stack.post("/capture/", {"api_key": api_key, "event": name, "distinct_id": "probe", "uuid": u})
        assert status == 200, body
        time.sleep(1 / rate)
    done.wait(timeout=600)
    done.set()
    watcher.join()
    processed = asyncio.run(_processed_at(stack, name))
    return [seen[u] - sent[u] for u in sent if u in seen], [processed[u] - wall[u] for u in wall if u in processed]


def _stored(client: Client, team_id: int, event: str) -> int:
    return int(client.execute(
        "SELECT count() FROM events WHERE team_id = %(t)s AND event = %(e)s", {"t": team_id, "e": event}
    )[0][0])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.history")
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument("--probes", type=int, default=100)
    p.add_argument("--probe-rate", type=float, default=10.0)
    p.add_argument("--phases", default="quiet,historical,as live", help="comma-separated, of the three")
    p.add_argument("--logs", type=Path, help="copy the stages' logs here at the end")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            team = stack.team("bench-history")
            client = stack.clickhouse_client()
            topics = topics_for(stack.settings)
            results = {}
            phases = {"quiet": None, "historical": topics.historical_events, "as live": topics.raw_events}
            for phase, topic in ((name, phases[name]) for name in args.phases.split(",")):
                tag = phase.replace(" ", "-")
                if topic is not None:
                    seconds = asyncio.run(_write_backlog(stack, topic, team.api_key, team.team_id, args.backlog, tag))
                    print(f"{phase}: wrote {args.backlog:,} backlog events to {topic} in {seconds:.1f} s", flush=True)
                latencies, processing = _probe(
                    stack, client, team.api_key, team.team_id, f"probe-{tag}", args.probes, args.probe_rate
                )
                left = args.backlog - _stored(client, team.team_id, f"backlog-{tag}") if topic else 0
                results[phase] = (latencies, processing, left)
                slow = [(i, round(x * 1000)) for i, x in enumerate(processing) if x > 0.5]
                print(f"{phase}: probes processed after more than 500 ms (index, ms): {slow}", flush=True)
                ms = sorted(x * 1000 for x in latencies)
                print(f"{phase}: {len(latencies)} probes, p50 {statistics.median(ms):.0f} ms, p99 "
                      f"{_percentile(ms, 99):.0f} ms; {left:,} backlog events still unstored after the last",
                      flush=True)  # fmt: skip
                if topic is not None:  # let the rest of the backlog drain before the next phase
                    while _stored(client, team.team_id, f"backlog-{tag}") < args.backlog:
                        time.sleep(1)
            print("\nphase        probes   p50 ms   p90 ms   p99 ms   max ms   to the row produced p50/p99 ms   "
                  "backlog left at last probe")  # fmt: skip
            for phase, (lat, proc, left) in results.items():
                ms, pms = [x * 1000 for x in lat], [x * 1000 for x in proc] or [0.0]
                print(f"{phase:<12} {len(ms):>6} {statistics.median(ms):>8.0f} {_percentile(ms, 90):>8.0f} "
                      f"{_percentile(ms, 99):>8.0f} {max(ms):>8.0f}   {statistics.median(pms):>13.0f} / "
                      f"{_percentile(pms, 99):<13.0f}   {left:,}")  # fmt: skip
            client.disconnect()
        finally:
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in stack.logs:
                    shutil.copy(log, args.logs / log.name)
            stack.close()


if __name__ == "__main__":
    main()
