"""A real eventpipe stack for integration tests: gateway, processor(s) and sink as subprocesses.

Each stack gets its own topic prefix, state directory, gateway port and its own database on the local
ClickHouse 26 server (or the server ``clickhouse_url`` names), so tests never see each other's data;
``close`` stops the processes and deletes the topics and the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import ujson
from aiokafka.admin import AIOKafkaAdminClient

from clickhouse.local_server import LocalServer
from eventpipe import config
from eventpipe.kafka import create_team, topics_for
from eventpipe.teams import Team

# The services deploy/local/*.sh start (their ports follow the same EVENTPIPE_LOCAL_* variables).
KAFKA = os.environ.get("EVENTPIPE_TEST_KAFKA", f"127.0.0.1:{os.environ.get('EVENTPIPE_LOCAL_KAFKA_PORT', '19092')}")
ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR = Path(os.environ.get("EVENTPIPE_LOCAL_DIR") or ROOT / ".local")


def _local_clickhouse() -> str:
    """The local ClickHouse 26 server's writer URL, without a database (deploy/local/clickhouse.sh
    writes the password to server.json); EVENTPIPE_TEST_CLICKHOUSE points the tests elsewhere."""
    if os.environ.get("EVENTPIPE_TEST_CLICKHOUSE"):
        return os.environ["EVENTPIPE_TEST_CLICKHOUSE"]
    server = LocalServer.read(LOCAL_DIR / "clickhouse")
    return server.url(database="") if server is not None else ""


CLICKHOUSE = _local_clickhouse()

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last value: {last!r})")


class Stack:
    # Every stack of the session, so a failed test's report carries its stages' logs (tests/conftest.py):
    # a stage that stalled or crashed says why there, and tmp dirs are rotated away soon after a CI run.
    made: ClassVar[list[Stack]] = []

    def __init__(
        self,
        tmp: Path,
        processors: int = 1,
        clickhouse_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        kafka: str | None = None,
    ) -> None:
        """``clickhouse_url``: another server than CLICKHOUSE, without database;
        ``extra_env``: more variables for every stage (e.g. EVENTPIPE_CLICKHOUSE_CLUSTER);
        ``kafka``: another bootstrap string than KAFKA."""
        self.kafka = kafka or KAFKA
        self.id = uuid.uuid4().hex[:10]
        self.prefix = f"t{self.id}_"
        self.home = tmp / f"stack-{self.id}"
        self.port = free_port()
        self.database = f"eventpipe_test_{self.id}"
        self.clickhouse = clickhouse_url or CLICKHOUSE
        url = f"{self.clickhouse}/{self.database}"
        self.env = {
            **os.environ,
            "EVENTPIPE_KAFKA_BOOTSTRAP": self.kafka,
            "EVENTPIPE_CLICKHOUSE_URL": url,
            "EVENTPIPE_HOME": str(self.home),
            "EVENTPIPE_PORT": str(self.port),
            "EVENTPIPE_HOST": "127.0.0.1",
            "EVENTPIPE_TOPIC_PREFIX": self.prefix,
            "EVENTPIPE_SINK_BATCH_SECONDS": "0.2",
            **(extra_env or {}),
        }
        self.n_processors = processors
        self.procs: list[subprocess.Popen[bytes]] = []
        self.uses_clickhouse = False  # a sink ran or the CLI touched the database: close() drops it
        self.logs: list[Path] = []
        self.closed = False
        Stack.made.append(self)

    @property
    def settings(self) -> config.Settings:
        saved = dict(os.environ)
        try:
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("EVENTPIPE_")})
            return config.load()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, stage: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.uses_clickhouse |= stage == "sink"
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / f"{stage}-{len(self.procs)}.log"
        self.logs.append(log)
        with log.open("wb") as fh:
            # Every process its own worker name: two processors in one home must not share RocksDB state.
            name = {"EVENTPIPE_WORKER_NAME": f"{stage}-{len(self.procs)}"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "eventpipe.cli", stage],
                env={**self.env, **name, **(env or {})},
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def start(self) -> Stack:
        self.spawn("sink")
        for _ in range(self.n_processors):
            self.spawn("processor")
        self.spawn("gateway")
        run = self.home / "run"
        try:
            poll(self._gateway_ready, 60, 0.2, "gateway /_ready")
            poll(lambda: (run / "processor.ready").exists() and (run / "sink.ready").exists(), 90, 0.2, "consumers")
            if self.n_processors > 1:
                # The ready marker is the first worker's; tests of identity across workers start once all
                # of them are in the group (a join mid-test is a rebalance, which the kill test covers).
                group = topics_for(self.settings).group("processors")
                poll(lambda: asyncio.run(self._members(group)) == self.n_processors, 90, 0.5, "all workers joined")
        except AssertionError:
            self.dump_logs()
            raise
        return self

    def __enter__(self) -> Stack:
        """``with Stack(...) as s``: started, and closed whatever happens (a failed start too)."""
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def _members(self, group: str) -> int:
        """Members of a consumer group once it is Stable (0 while it rebalances)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
        await admin.start()
        try:
            [described] = (await admin.describe_consumer_groups([group]))[0].to_object()["groups"]
            return len(described["members"]) if described["state"] == "Stable" else 0
        finally:
            await admin.close()

    def add_gateway(self) -> str:
        """Another gateway process on its own port (scale-out); returns its base URL once ready."""
        port = free_port()
        self.spawn("gateway", {"EVENTPIPE_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url + "/_ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        poll(ready, 60, 0.2, f"second gateway {url}")
        return url

    def start_gateway(self) -> Stack:
        """Only the gateway (for capture-level tests that read the raw topic themselves)."""
        self.spawn("gateway")
        poll(self._gateway_ready, 60, 0.2, "gateway /_ready")
        return self

    def raw_events(self, expected: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Read the raw-events topic from the start until ``expected`` messages arrived."""
        return asyncio.run(self._read_topic(topics_for(self.settings).raw_events, expected, timeout))

    async def _read_topic(self, topic: str, expected: int, wait_s: float) -> list[dict[str, Any]]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.kafka, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        out: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + wait_s
            while len(out) < expected and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    out += [{**ujson.loads(m.value), "_key": m.key.decode()} for m in messages]
        finally:
            await consumer.stop()
        return out

    def _gateway_ready(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                self.dump_logs()
                raise AssertionError(f"a stage exited early with {p.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/_ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, stage: str, only_one: bool = False) -> None:
        """SIGKILL running processes of ``stage`` (a crash, not a shutdown): all, or just the first."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if log.name.startswith(stage) and proc.poll() is None:
                proc.kill()
                proc.wait()
                if only_one:
                    return

    def pid(self, stage: str) -> int:
        return next(
            p.pid
            for p, log in zip(self.procs, self.logs, strict=True)
            if log.name.startswith(stage) and p.poll() is None
        )

    def log_tails(self, chars: int = 4000) -> str:
        return "".join(f"==== {log.name}\n{log.read_text(errors='replace')[-chars:]}\n" for log in self.logs)

    def dump_logs(self) -> None:
        print(self.log_tails(), file=sys.stderr)

    def create_team(self, name: str = "test", api_key: str | None = None) -> str:
        return self.team(name, api_key).api_key

    def team(self, name: str = "test", api_key: str | None = None) -> Team:
        """A new team (its id and api key): with ``api_key`` (a PostHog project key, kept) or a fresh key."""
        return asyncio.run(create_team(self.settings, name, api_key))

    def post(
        self,
        path: str,
        body: bytes | str | dict[str, Any] | list[Any],
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else ujson.dumps(body)).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers or {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (ujson.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, (ujson.loads(raw) if raw else None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.uses_clickhouse |= args[0] in ("migrate", "sql")
        return subprocess.run(
            [sys.executable, "-m", "eventpipe.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def sql(self, query: str) -> list[dict[str, Any]]:
        res = self.cli("sql", query, "--format", "json")
        assert res.returncode == 0, res.stderr
        return ujson.loads(res.stdout)

    def clickhouse_client(self, database: str | None = "") -> Any:
        """A clickhouse-driver client of the stack's server: on its database (the default), another, or
        none (``None``). Its database is then dropped by :meth:`close`."""
        from clickhouse_driver import Client

        from clickhouse.store import connection_args
        from eventpipe.config import StoreURL

        self.uses_clickhouse = True
        db = {} if database is None else {"database": database or self.database}
        return Client(**connection_args(StoreURL.parse(self.clickhouse)), **db)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        self.closed = True
        self.stop_all()
        asyncio.run(self._delete_topics())
        if not self.uses_clickhouse:
            return
        cluster = self.env.get("EVENTPIPE_CLICKHOUSE_CLUSTER")
        on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
        client = self.clickhouse_client(database=None)
        try:
            client.execute(f"DROP DATABASE IF EXISTS `{self.database}`{on_cluster}")
        finally:
            client.disconnect()

    async def _delete_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()


def topics(stack: Stack) -> Any:
    return topics_for(stack.settings)
