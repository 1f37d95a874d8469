"""The local ClickHouse 26 server (clickhouse/local_server.py) behaves as the launcher relies on.

The launcher uses chDB's internal entry point (``chdb._chdb.query`` with ``SYSTEM START LISTEN``): if an
upgrade of chdb-core changes that behaviour, these tests fail first and say what broke. One launcher
per process, so each server here is a subprocess of its own on free ports.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clickhouse_driver import Client, errors

from clickhouse.local_server import READER, WRITER, LocalServer
from tests.stack import LOCAL_DIR, ROOT, free_port, poll


class Launched:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.tcp, self.http = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalServer:
        self.log = (self.dir.parent / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clickhouse.local_server", "--dir", str(self.dir),
             "--tcp-port", str(self.tcp), "--http-port", str(self.http)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        poll(self._answers, timeout=60, interval=0.2, what="local ClickHouse answering")
        server = LocalServer.read(self.dir)
        assert server is not None
        return server

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "launcher exited during start"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/ping", timeout=2) as r:
                return r.read() == b"Ok.\n"
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    server = Launched(tmp_path / "clickhouse")
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def client(server: LocalServer, user: str = WRITER, database: str = "") -> Client:
    password = {WRITER: server.writer_password, READER: server.reader_password}.get(user, "")
    return Client(host=server.host, port=server.tcp_port, user=user, password=password, database=database or "default")


def test_serves_clickhouse_26_with_what_the_sink_needs(launched: Launched) -> None:
    server = launched.start()
    w = client(server, database=server.database)
    assert w.execute("SELECT version()")[0][0].startswith("26.9.")
    w.execute(
        "CREATE TABLE t (ts DateTime64(6, 'UTC'), n UInt32) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    when = datetime(2026, 12, 1, 9, 3, 11, 913767, tzinfo=UTC)
    for _ in range(2):  # the same block re-sent with the same token is stored once
        w.execute("INSERT INTO t VALUES", [(when, 1)], settings={"insert_deduplication_token": "topic:0:0-0"})
    assert w.execute("SELECT ts, count() FROM t GROUP BY ts") == [(when, 1)]
    assert w.execute("SELECT {n:UInt32} + 1", {"n": 41}, settings={"server_side_params": 1}) == [(42,)]


def test_users_the_engine_enforces(launched: Launched) -> None:
    server = launched.start()
    w = client(server, database=server.database)
    w.execute("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")
    w.execute("INSERT INTO t VALUES", [(1,)])
    reader = client(server, READER, server.database)
    assert reader.execute("SELECT count() FROM t") == [(1,)]
    for refused in ("INSERT INTO t VALUES (2)", "DROP TABLE t", "SELECT * FROM file('/etc/passwd', 'RawBLOB')"):
        with pytest.raises(errors.ServerException) as err:
            reader.execute(refused)
        assert err.value.code in (164, 497), refused
    # The passwordless `default` user (clickhouse-local's own session) can read no data and write nothing.
    anonymous = client(server, "default")
    denied = (f"SELECT count() FROM {server.database}.t", "CREATE DATABASE x", "SELECT * FROM file('/etc/passwd')")
    for refused in denied:
        with pytest.raises(errors.ServerException) as err:
            anonymous.execute(refused)
        assert err.value.code == 497, refused
    with pytest.raises(errors.ServerException) as err:
        Client(host=server.host, port=server.tcp_port, user=WRITER, password="wrong").execute("SELECT 1")
    assert err.value.code == 516  # AUTHENTICATION_FAILED
    # HTTP: the read-only user's answer, as a BI tool would ask.
    auth = base64.b64encode(f"{READER}:{server.reader_password}".encode()).decode()
    url = f"{server.http}/?database={server.database}&query=SELECT+count()+FROM+t"
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read() == b"1\n"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{server.http}/?query=SELECT+count()+FROM+{server.database}.t", timeout=10)


def test_data_and_passwords_survive_sigkill_and_sigterm_stops_it(launched: Launched) -> None:
    server = launched.start()
    w = client(server, database=server.database)
    w.execute("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")
    w.execute("INSERT INTO t VALUES", [(7,)])
    assert launched.stop(signal.SIGKILL) == -signal.SIGKILL
    again = launched.start()
    assert again == server  # same ports, database and passwords
    assert client(again, database=again.database).execute("SELECT n FROM t") == [(7,)]
    assert launched.stop(signal.SIGTERM) in (0, -signal.SIGTERM)


def test_secrets_are_private(launched: Launched) -> None:
    launched.start()
    for path in (launched.dir / "server.json", launched.dir / "passwords.json", launched.dir / "data" / "users.xml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (launched.dir, launched.dir / "data"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    passwords = json.loads((launched.dir / "passwords.json").read_text())
    assert all(len(base64.urlsafe_b64decode(p + "=")) >= 32 for p in passwords.values())
    assert not any(p in (launched.dir / "data" / "users.xml").read_text() for p in passwords.values())


def test_status_names_the_servers_bi_tools_connect_to(clickhouse_server: str) -> None:
    """`eventpipe status --json` on the local stack; an HTTP ?query= to its URL returns `eventpipe sql`'s rows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTPIPE_")}
    env["EVENTPIPE_LOCAL_DIR"] = str(LOCAL_DIR)
    cli = [sys.executable, "-m", "eventpipe.cli"]
    status = json.loads(subprocess.run([*cli, "status", "--json"], env=env, cwd=ROOT, capture_output=True,
                                       text=True, check=True, timeout=60).stdout)  # fmt: skip
    assert set(status) >= {"stages", "kafka", "clickhouse"}
    assert set(status["stages"]) == {"gateway", "processor", "sink"}
    assert all(set(s) >= {"pid", "ready"} for s in status["stages"].values())
    ch = status["clickhouse"]
    assert ch["native"] == clickhouse_server.split("@")[-1] and ch["http"].startswith("http://127.0.0.1:")
    query = "SELECT name, engine FROM system.databases WHERE name = 'system' FORMAT TabSeparated"
    sql = [*cli, "sql", query.removesuffix(" FORMAT TabSeparated"), "--format", "tsv"]
    via_cli = subprocess.run(sql, env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    server = LocalServer.read(LOCAL_DIR / "clickhouse")
    assert server is not None
    req = urllib.request.Request(
        f"{ch['http']}/?query={urllib.request.quote(query)}",
        headers={"X-ClickHouse-User": ch["read_only_user"], "X-ClickHouse-Key": server.reader_password},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read().decode() == via_cli == "system\tMemory\n"
