"""``eventpipe sql`` is read-only by the engine: each escape ends in a clear error with nothing read,
written or fetched — as the local server's read-only user (the default) and as a writer URL, where
the CLI asks for ``readonly=1``."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import ujson

from tests.stack import LOCAL_DIR, ROOT, free_port


@pytest.fixture(params=["reader", "writer"])
def sql_env(request: pytest.FixtureRequest, clickhouse_server: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTPIPE_")}
    env["EVENTPIPE_LOCAL_DIR"] = str(LOCAL_DIR)
    if request.param == "writer":
        # The writer's URL: the CLI itself must make the session read-only.
        env["EVENTPIPE_CLICKHOUSE_URL"] = f"{clickhouse_server}/eventpipe"
    return env


def sql(env: dict[str, str], query: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", "sql", query, "--format", "json", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


class Probe(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        Probe.hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"fetched")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def probe_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Probe.hits = 0
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/probe"
    finally:
        server.shutdown()
        server.server_close()


def refused(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, res.stdout
    assert res.stdout == ""  # no rows
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr


def test_file_is_not_read(sql_env: dict[str, str]) -> None:
    refused(sql(sql_env, "SELECT * FROM file('/proc/self/environ', 'RawBLOB')"), "ClickHouse error")


def test_into_outfile_writes_nothing(sql_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "x"
    refused(sql(sql_env, f"SELECT 1 INTO/**/OUTFILE '{target}'"), "INTO OUTFILE")
    assert not target.exists()


def test_url_is_not_fetched(sql_env: dict[str, str], probe_url: str) -> None:
    refused(sql(sql_env, f"SELECT * FROM url('{probe_url}', 'RawBLOB')"), "ClickHouse error")
    assert Probe.hits == 0


def test_settings_cannot_lift_readonly(sql_env: dict[str, str]) -> None:
    refused(sql(sql_env, "SELECT count() FROM system.one SETTINGS readonly = 0"), "ClickHouse error 164")


@pytest.mark.parametrize(
    "query",
    [
        "CREATE TABLE escaped (x UInt8) ENGINE = Memory",
        "INSERT INTO FUNCTION file('/tmp/eventpipe-escape', 'TSV', 'x UInt8') VALUES (1)",
        "SELECT 1; SELECT 2",  # one statement
        "SELECT * FROM remote('127.0.0.1:9000', system.one)",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SET readonly = 0",
    ],
)
def test_writes_and_other_escapes_are_refused(sql_env: dict[str, str], query: str) -> None:
    refused(sql(sql_env, query), "ClickHouse error")
    assert not Path("/tmp/eventpipe-escape").exists()


def test_results_are_bounded(sql_env: dict[str, str]) -> None:
    refused(sql(sql_env, "SELECT number FROM system.numbers LIMIT 2000000"), "ClickHouse error 396")


def test_reads_work_with_parameters(sql_env: dict[str, str]) -> None:
    res = sql(sql_env, "SELECT {n:UInt8} + 1 AS x, version() AS v", "--param", "n=41")
    assert res.returncode == 0, res.stderr
    [row] = ujson.loads(res.stdout)
    assert row["x"] == 42 and row["v"].startswith("26.")
