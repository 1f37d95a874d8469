"""The local ClickHouse 26 server of ``make run``, ``make up`` and the tests.

It is ``clickhouse-local`` from PyPI's ``chdb-core`` with its native-TCP and HTTP listeners switched on
(``SYSTEM START LISTEN``), serving a data directory under ``.local/`` on loopback. That goes through
chDB's *internal* entry point ``chdb._chdb.query``: the public ``chdb.query`` refuses to start listeners
("start_servers_callback is not set"). So the version is pinned (the ``local`` extra in pyproject.toml:
``chdb-core==26.9.0``), everything that depends on it lives in this module, and
tests/test_it_local_server.py fails loudly if the behaviour changes.

Access (clickhouse-local reads ``users_config``; the process's own session is the passwordless
``default`` user, which loopback clients could also use, so that user is granted nothing but what the
launcher itself needs):

* ``default``: ``SYSTEM LISTEN``, creating the project database, reading ``system.numbers``;
* ``eventpipe``: the writer (sink, migrations), password in ``server.json``;
* ``eventpipe_reader``: read-only (``readonly=2`` so BI tools may set their own limits, capped by
  constraints; no grant on table functions, so ``file()``, ``url()``, ``remote()`` … are refused) —
  for ``eventpipe sql``, clickhouse-client, Grafana, Metabase.

``server.json`` (mode 0600, beside the data) is how the rest of eventpipe finds the server: native
address, HTTP URL, database and both users' passwords. Passwords are 32 random bytes, made once and
kept across restarts; users.xml holds only their SHA-256.

Run: ``python -m clickhouse.local_server --dir DIR --tcp-port N --http-port M`` (deploy/local/clickhouse.sh
does, in the background). It serves until SIGTERM; data survives SIGTERM and SIGKILL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from eventpipe.files import write_private

ENGINE_VERSION = "26.9.0"  # chdb-core, the only version this launcher is known to work with
DATABASE = "eventpipe"
WRITER = "eventpipe"
READER = "eventpipe_reader"
# Caps on what a reader may ask for (constraints: a BI tool may lower them, never raise them).
READER_LIMITS = {"max_execution_time": 300, "max_memory_usage": 4_000_000_000, "max_result_rows": 10_000_000}
INFO_FILE = "server.json"


@dataclass(frozen=True)
class LocalServer:
    """What ``server.json`` says about a local server."""

    host: str
    tcp_port: int
    http_port: int
    database: str
    writer_password: str
    reader_password: str

    @property
    def native(self) -> str:
        return f"{self.host}:{self.tcp_port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def url(self, reader: bool = False, database: str | None = None) -> str:
        """A ``clickhouse://`` store URL for the writer (or the read-only user); ``database=""`` leaves
        the database off (tests and benchmarks add their own)."""
        user, password = (READER, self.reader_password) if reader else (WRITER, self.writer_password)
        db = self.database if database is None else database
        return f"clickhouse://{user}:{password}@{self.native}" + (f"/{db}" if db else "")

    @classmethod
    def read(cls, directory: Path) -> LocalServer | None:
        try:
            doc = json.loads((directory / INFO_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(
            doc["host"], int(doc["tcp_port"]), int(doc["http_port"]), doc["database"],
            doc["users"][WRITER], doc["users"][READER],
        )  # fmt: skip


def _passwords(directory: Path) -> dict[str, str]:
    """The users' passwords: made once, kept across restarts (clients hold them in their config)."""
    path = directory / "passwords.json"
    try:
        known = json.loads(path.read_text())
        if isinstance(known, dict) and all(isinstance(known.get(u), str) for u in (WRITER, READER)):
            return {u: known[u] for u in (WRITER, READER)}
    except (OSError, ValueError):
        pass
    made = {WRITER: secrets.token_urlsafe(32), READER: secrets.token_urlsafe(32)}
    write_private(path, json.dumps(made))
    return made


def _sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def users_xml(passwords: dict[str, str], database: str) -> str:
    limits = "".join(f"<{k}>{v}</{k}>" for k, v in READER_LIMITS.items())
    caps = "".join(f"<{k}><max>{v}</max></{k}>" for k, v in READER_LIMITS.items())
    loopback = "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"
    return f"""<clickhouse>
  <profiles>
    <default/>
    <reader><readonly>2</readonly>{limits}<constraints>{caps}<readonly><min>1</min></readonly></constraints></reader>
  </profiles>
  <quotas><default/></quotas>
  <users>
    <default>
      <password></password>{loopback}<profile>default</profile><quota>default</quota>
      <grants>
        <query>GRANT SYSTEM LISTEN ON *.*</query>
        <query>GRANT CREATE DATABASE ON {database}.*</query>
        <query>GRANT SELECT ON system.numbers</query>
      </grants>
    </default>
    <{WRITER}>
      <password_sha256_hex>{_sha256(passwords[WRITER])}</password_sha256_hex>{loopback}
      <profile>default</profile><quota>default</quota><default_database>{database}</default_database>
    </{WRITER}>
    <{READER}>
      <password_sha256_hex>{_sha256(passwords[READER])}</password_sha256_hex>{loopback}
      <profile>reader</profile><quota>default</quota><default_database>{database}</default_database>
      <grants><query>GRANT SELECT, SHOW ON *.*</query></grants>
    </{READER}>
  </users>
</clickhouse>
"""


def config_xml(data: Path, host: str, tcp_port: int, http_port: int) -> str:
    return f"""<clickhouse>
  <listen_host>{escape(host)}</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <users_config>{escape(str(data / "users.xml"))}</users_config>
</clickhouse>
"""


def prepare(directory: Path, host: str, tcp_port: int, http_port: int, database: str = DATABASE) -> Path:
    """Write config, users and ``server.json``; returns the data directory (the engine's cwd)."""
    data = directory / "data"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    os.chmod(data, 0o700)
    passwords = _passwords(directory)
    write_private(data / "users.xml", users_xml(passwords, database))
    (data / "config.xml").write_text(config_xml(data, host, tcp_port, http_port))
    info = {
        "host": host,
        "tcp_port": tcp_port,
        "http_port": http_port,
        "database": database,
        "engine": f"chdb-core {ENGINE_VERSION}",
        "users": passwords,
    }
    write_private(directory / INFO_FILE, json.dumps(info, indent=2))
    return data


# Runs until the process is stopped: clickhouse-local serves its listeners for as long as the call that
# started them lasts, so the last statement never ends (one row a second from an endless table).
SERVE = (
    "CREATE DATABASE IF NOT EXISTS `{database}`; SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; "
    "SELECT sleepEachRow(1) FROM system.numbers SETTINGS max_block_size = 1 FORMAT Null"
)


def serve(data: Path, database: str = DATABASE) -> int:
    try:
        from chdb import _chdb  # the internal entry point, see the module docstring
    except ImportError:
        print(
            "error: the local ClickHouse needs chdb-core: pip install -e '.[local]' (make run does)", file=sys.stderr
        )
        return 2
    os.chdir(data)  # clickhouse-local reads config.xml from its working directory
    try:
        _chdb.query(SERVE.format(database=database), "TabSeparated", path=str(data))
    except Exception as exc:  # the engine reports start-up errors (port taken, bad config) this way
        print(f"error: ClickHouse stopped: {exc}", file=sys.stderr)
        return 1
    print("error: ClickHouse's serving statement ended", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clickhouse.local_server", description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, type=Path, help="state directory (data, users, server.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tcp-port", type=int, default=19000)
    p.add_argument("--http-port", type=int, default=18123)
    p.add_argument("--database", default=DATABASE)
    args = p.parse_args(argv)
    data = prepare(args.dir.resolve(), args.host, args.tcp_port, args.http_port, args.database)
    return serve(data, args.database)


if __name__ == "__main__":
    sys.exit(main())
