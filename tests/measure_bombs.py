"""Measure what hostile requests cost a gateway process (a script, not a test; no broker needed).

    .venv/bin/python -m tests.measure_bombs [--root DIR] [--repeat N]

Starts a gateway child process whose Kafka producer and team registry are in-memory fakes (so only
the HTTP, decode and parse work is measured), probes ``/_health`` every 10 ms while it sends each
bomb of :mod:`tests.hostile` (plus a good batch, to see the hot path still answers), and prints per
bomb: the answer, its latency, the worst and p99 ``/_health`` latency while it was in flight, and the
peak RSS (VmHWM) of the gateway process and of its decode workers. ``--root`` points at another
checkout (e.g. ``git archive main | tar -x -C /tmp/base``) to measure the code before a change.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.procs import descendants, peak_rss_kib
from tests.stack import free_port

HERE = Path(__file__).resolve().parent.parent


def _child(root: str, port: int) -> None:
    """The gateway under test, with fakes in place of Kafka (runs in the child process)."""
    sys.path.insert(0, root)
    from dataclasses import replace

    from aiohttp import web

    from eventpipe.config import Settings
    from gateway import app as gw

    class Registry:
        def team_id(self, api_key: str) -> int | None:
            return 1 if api_key == "phc_good" else None

        async def resolve(self, api_key: str) -> int | None:
            return self.team_id(api_key)

        async def stop(self) -> None:
            pass

    from tests.fakes import FakeProducer as Producer  # acks at once; send and the batch API

    print(f"child gateway from {gw.__file__}", flush=True)
    settings = replace(Settings(), port=port)
    if "registry" in inspect.signature(gw.build_app).parameters:
        gw.serve(settings, registry=Registry(), producer=Producer(record=False))  # type: ignore[call-arg]
    else:  # the code before the hardening: no injection, plain run_app
        app = gw.build_app(settings)
        app.on_startup.clear()
        app.on_cleanup.clear()
        app[gw.PRODUCER] = Producer(record=False)  # type: ignore[misc]
        app[gw.REGISTRY] = Registry()  # type: ignore[misc]
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _post(
    url: str, body: bytes, headers: dict[str, str], method: str = "POST", timeout: float = 120
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _probe(base: str, stop: asyncio.Event, latencies: list[float]) -> None:
    """/_health every 10 ms on a raw keep-alive connection; each latency in seconds."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /_health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        while not stop.is_set():
            started = time.perf_counter()
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readuntil(b"}")  # the tiny JSON body
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    finally:
        writer.close()


async def _measure(
    base: str, path: str, body: bytes, headers: dict[str, str], method: str, repeat: int
) -> dict[str, Any]:
    latencies: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(base, stop, latencies))
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(asyncio.to_thread(_post, base + path, body, headers, method) for _ in range(repeat))
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await probe
    status = sorted({a[0] for a in answers})
    worst = max(latencies) if latencies else float("nan")
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98] if len(latencies) >= 2 else worst
    return {"status": status, "detail": answers[0][1][:90], "seconds": elapsed, "health_max": worst, "health_p99": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(HERE), help="checkout whose gateway to measure (default: this one)")
    parser.add_argument("--repeat", type=int, default=1, help="concurrent copies of each bomb")
    parser.add_argument("--only", default="", help="comma-separated bomb names")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.root, args.child)
        return
    from tests.hostile import measured_bombs

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.measure_bombs", "--root", args.root, "--child", str(port)],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": args.root},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/_health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(1.0)  # let decode workers start
        print(f"gateway {args.root}: start RSS {peak_rss_kib(proc.pid, missing_ok=True) / 1024:.0f} MB")
        only = set(filter(None, args.only.split(",")))
        for name, path, body, headers, method in measured_bombs():
            if only and name not in only:
                continue
            r = asyncio.run(_measure(base, path, body, headers, method, args.repeat))
            workers = [peak_rss_kib(c, missing_ok=True) for c in descendants(proc.pid)]
            print(
                f"{name:28} {len(body) / 1024:8.0f} KB -> {r['status']} in {r['seconds'] * 1000:7.0f} ms; "
                f"/_health max {r['health_max'] * 1000:6.0f} ms p99 {r['health_p99'] * 1000:6.0f} ms; "
                f"peak RSS gateway {peak_rss_kib(proc.pid, missing_ok=True) / 1024:5.0f} MB, workers "
                f"{'+'.join(f'{w / 1024:.0f}' for w in workers) or '-'} MB  {r['detail']!r}"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
