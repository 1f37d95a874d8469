"""Hostile input through a real gateway process on the shared Kafka: 4xx or stored, never a stall.

While the bombs of tests/hostile.py tagged "it" arrive one after another, a thread probes /_health;
the gateway's peak RSS (VmHWM of it and its decode workers) and the probe's latencies are bounded
generously (the targets are 400 MB and a 100 ms p99; the machine is shared, so the test allows 2x).
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from typing import Any

from tests import hostile
from tests.procs import descendants, peak_rss_kib
from tests.stack import Stack


def probe(port: int, stop: threading.Event, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("GET", "/_health")
            conn.getresponse().read()
            latencies.append(time.perf_counter() - started)
            stop.wait(0.01)  # pacing, not synchronisation
    finally:
        conn.close()


def test_bombs_are_refused_or_stored_without_stalling(gateway: Stack, api_key: str) -> None:
    pid = gateway.pid("gateway")
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(gateway.port, stop, latencies), daemon=True)
    prober.start()
    expected = 0
    answers: dict[str, tuple[int, Any]] = {}
    try:
        for bomb in hostile.by_tag("it"):
            status, body = gateway.post(bomb.path, bomb.build(api_key), headers=bomb.headers, method=bomb.method)
            answers[bomb.name] = (status, body)
            if status == 200:
                expected += bomb.stored
    finally:
        stop.set()
        prober.join(timeout=30)
    wrong = {
        name: answer
        for name, answer in answers.items()
        for bomb in hostile.by_tag("it")
        if bomb.name == name
        and (answer[0] not in bomb.statuses or (bomb.code and answer[0] >= 400 and answer[1]["code"] != bomb.code))
    }
    assert not wrong, wrong
    for status, body in answers.values():
        if status >= 400:
            assert set(body) == {"type", "code", "detail", "attr"}

    rss = {"gateway": peak_rss_kib(pid) / 1024, **{f"child {c}": peak_rss_kib(c) / 1024 for c in descendants(pid)}}
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    print(f"peak RSS MB {rss}; /_health p99 {p99 * 1000:.1f} ms max {max(latencies) * 1000:.1f} ms "
          f"over {len(latencies)} probes")
    assert rss["gateway"] < 400, rss
    assert sum(rss.values()) < 800, rss  # gateway + forkserver + decode worker, each bounded
    assert p99 < 0.2, f"/_health p99 {p99 * 1000:.0f} ms"

    events = gateway.raw_events(expected)
    assert len(events) == expected
    by_id = {e["distinct_id"]: e for e in events}
    assert by_id["nan"]["data"]["properties"] == {"a": None, "b": None, "c": None, "d": None, "e": None}
    surrogate = by_id["sur\ufffd"]
    assert surrogate["event"] == "e\ufffd"
    assert surrogate["data"]["properties"] == {"s": "\ufffd", "\ufffd": 1}
    assert by_id["utf8"]["data"]["properties"]["s"].startswith("a\ufffd")
    months = sorted(e["timestamp"][:7] for e in events if e["data"]["properties"].get("i", -1) >= 0
                    and e["distinct_id"].startswith("user-") and e["timestamp"][:4] < "2025")
    assert len({m for m in months if m >= "2010-01"}) >= 180
    for e in events:
        assert int(e["timestamp"][:4]) >= 1900

    # The gateway still serves a good event after all of it.
    good = {"api_key": api_key, "event": "ok", "distinct_id": "after"}
    assert gateway.post("/capture/", good) == (200, {"status": 1})
