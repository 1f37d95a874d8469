"""eventpipe/admin.py, the stages' loopback /metrics, and what `eventpipe status` shows of the processors."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import aiohttp

from eventpipe.admin import serve_admin
from eventpipe.config import Settings
from eventpipe.metrics import ProcessorMetrics
from eventpipe.status import admin_endpoints, processor_figures, processors, render

SECRET = "9f3c1a7be04d5e2f8a6b1c0d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f"


def test_the_old_import_still_works() -> None:
    from clickhouse.admin import build_admin_app
    from eventpipe.admin import build_admin_app as moved

    assert build_admin_app is moved


def _metrics() -> ProcessorMetrics:
    m = ProcessorMetrics()
    m.observe_step("events_raw", {"events": [{}]}, [(b"k", {"k": "merge"})])
    m.observe_step("identity_inbox", {}, [], "merged")
    m.set_lag({"events_raw:0": 2, "identity_inbox:0": 1})
    return m


def test_without_a_secret_one_is_made_and_written_with_the_url(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    run_file = tmp_path / "processor-admin-1.json"

    async def scenario() -> tuple[int, int, str]:
        runner = await serve_admin(settings, _metrics().render, 0, run_file)
        try:
            doc = json.loads(run_file.read_text())
            assert doc["url"].startswith("http://127.0.0.1:") and len(doc["secret"]) >= 32
            async with aiohttp.ClientSession() as http:
                async with http.get(doc["url"]) as bare:
                    refused = bare.status
                async with http.get(doc["url"], headers={"Authorization": f"Bearer {doc['secret']}"}) as ok:
                    return refused, ok.status, await ok.text()
        finally:
            await runner.cleanup()

    refused, status, text = asyncio.run(scenario())
    assert (refused, status) == (401, 200)
    assert 'eventpipe_processor_merges_total{outcome="merged"} 1' in text
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600


def test_a_configured_secret_is_never_written(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, admin_secret=SECRET)

    async def scenario() -> None:
        runner = await serve_admin(settings, str, 0, tmp_path / "x.json")
        await runner.cleanup()

    asyncio.run(scenario())
    assert not (tmp_path / "x.json").exists()


def test_status_finds_live_workers_and_reads_their_figures(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    dead = 2**22 + 12345  # above the default pid_max
    (run / f"processor-admin-{dead}.json").write_text(json.dumps({"url": "http://127.0.0.1:1/metrics", "secret": "s"}))

    async def scenario() -> list[dict[str, object]]:
        runner = await serve_admin(settings, _metrics().render, 0, run / f"processor-admin-{os.getpid()}.json")
        try:
            return await asyncio.to_thread(processors, settings)
        finally:
            await runner.cleanup()

    [worker] = asyncio.run(scenario())
    assert worker["pid"] == os.getpid()
    assert worker["messages_in"] == {"events_raw": 1, "identity_inbox": 1}
    assert (worker["lag"], worker["partitions"]) == (3, 2)
    assert worker["merges"] == {"joined": 0, "merged": 1, "same": 0, "refused": 0}
    stages = {s: {"pid": None, "ready": False} for s in ("gateway", "processor", "sink")}
    text = render({"stages": stages, "processors": [worker], "kafka": "k:1", "clickhouse": {"native": None}})
    assert "in: events_raw 1  identity_inbox 1  lag 3 (2 partitions)  merges: joined 0 merged 1" in text


def test_status_uses_the_configured_port_when_no_worker_wrote_a_file(tmp_path: Path) -> None:
    settings = replace(Settings(home=tmp_path), admin_secret=SECRET, processor_admin_port=9102)
    assert admin_endpoints(settings) == {0: ("http://127.0.0.1:9102/metrics", SECRET)}
    assert admin_endpoints(Settings(home=tmp_path)) == {}


def test_figures_of_a_worker_that_processed_nothing() -> None:
    got = processor_figures(ProcessorMetrics().render())
    assert got == {"messages_in": {"events_raw": 0, "identity_inbox": 0}, "lag": 0, "partitions": 0,
                   "merges": {"joined": 0, "merged": 0, "same": 0, "refused": 0}}
