"""A processor worker's /metrics: loopback, behind the admin secret, counting what it processed.

Real Kafka and ClickHouse, one worker: a few events, among them one $identify that merges two persons;
the worker's endpoint (its URL and secret in ``<home>/run/processor-admin-<pid>.json``) answers 401
without the secret and, with it, counts the events, the lane's decision and the partitions' lag.
"""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from typing import Any

from eventpipe.metrics import parse
from tests.stack import Stack, poll


def _scrape(url: str, secret: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_worker_serves_its_metrics_behind_the_secret(stack: Stack) -> None:
    api_key = stack.create_team("metrics")
    events = [
        {"event": "$pageview", "distinct_id": "anon", "properties": {"$set": {"a": 1}}},
        {"event": "$pageview", "distinct_id": "anon", "properties": {}},
        {"event": "$pageview", "distinct_id": "user", "properties": {"$set": {"b": 2}}},
        # user has a person, anon's is not identified: the lane merges anon's person into user's
        {"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "anon"}},
    ]
    for event in events:  # one by one: each id's events reach its partition in this order
        status, body = stack.post("/capture/", {**event, "api_key": api_key})
        assert (status, body) == (200, {"status": 1})

    run_file = stack.home / "run" / f"processor-admin-{stack.pid('processor')}.json"
    poll(run_file.exists, 30, 0.2, "the worker's admin file")
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
    admin = json.loads(run_file.read_text())
    assert admin["url"].startswith("http://127.0.0.1:")

    assert _scrape(admin["url"], None)[0] == 401
    assert _scrape(admin["url"], "x" * 43)[0] == 401

    def processed() -> dict[str, dict[str, float]] | None:
        status, text = _scrape(admin["url"], admin["secret"])
        assert status == 200
        got = parse(text)
        done = (
            got["eventpipe_processor_messages_total"]["events_raw"] >= len(events)
            and got["eventpipe_processor_merges_total"]["merged"] >= 1
            and got.get("eventpipe_processor_rows_total", {}).get("events", 0) >= len(events)
            and "eventpipe_processor_consumer_lag" in got  # the watchdog's first round (every 5 s)
        )
        return got if done else None

    try:
        got = poll(processed, 60, 0.5, "the events and the merge in the worker's metrics")
    except AssertionError:
        stack.dump_logs()
        raise
    assert got["eventpipe_processor_messages_total"]["events_raw"] == len(events)
    assert got["eventpipe_processor_messages_total"]["identity_inbox"] >= 2  # the merge request and its reply
    assert got["eventpipe_processor_merges_total"] == {"joined": 0, "merged": 1, "same": 0, "refused": 0}
    inbox = got["eventpipe_processor_inbox_messages_total"]
    assert inbox["merge"] == 1 and inbox["merged"] == 1 and inbox["repoint"] >= 1 and inbox["merge_out"] == 1
    assert got["eventpipe_processor_rows_total"]["overrides"] >= 1  # anon now points at user's person
    assert got["eventpipe_processor_batch_messages_count"][""] >= 1
    partitions = stack.settings.partitions
    lag = got["eventpipe_processor_consumer_lag"]
    assert {f"events_raw:{p}" for p in range(partitions)} <= set(lag) and all(v >= 0 for v in lag.values())

    def shown() -> dict[str, Any] | None:
        res = stack.cli("status", "--json")
        assert res.returncode == 0, res.stderr
        workers = json.loads(res.stdout)["processors"]
        return workers[0] if workers and workers[0].get("merges", {}).get("merged") == 1 else None

    worker = poll(shown, 30, 0.5, "the worker in eventpipe status")
    assert worker["pid"] == stack.pid("processor")
    assert worker["messages_in"]["events_raw"] == len(events)
    text = stack.cli("status").stdout
    assert f"worker {worker['pid']}" in text and "merges: joined 0 merged 1 same 0 refused 0" in text

    # The sink's endpoint is served by the same code (eventpipe/admin.py).
    sink = json.loads((stack.home / "run" / "sink-admin.json").read_text())
    assert _scrape(sink["url"], None)[0] == 401
    status, text = _scrape(sink["url"], sink["secret"])
    assert status == 200 and "eventpipe_sink_rows_total" in text
