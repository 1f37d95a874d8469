"""Helpers shared by the stage benchmarks (``processors``, ``sink``): a stage as a subprocess, CPU
accounting from ``/proc``, preloading a topic, progress polling, printing and clean-up.

The low-level pieces (CPU counters, settings from an environment, topic deletion) come from
:mod:`bench.gateway`, so every benchmark measures the same way.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest

from bench.gateway import ROOT, CpuMeter, CpuSample, _broker_pid, _delete_topics, _free_port, _proc_cpu_s
from clickhouse.local_server import LocalServer

# The state of deploy/local/*.sh (the local Kafka and ClickHouse), as tests/stack.py finds it.
LOCAL_DIR = Path(os.environ.get("EVENTPIPE_LOCAL_DIR") or ROOT / ".local")
T = TypeVar("T")

__all__ = [
    "LOCAL_DIR",
    "ROOT",
    "CpuMeter",
    "Progress",
    "Stage",
    "TopicCounter",
    "clickhouse_server_pid",
    "cpu_line",
    "delete_kafka_state",
    "local_clickhouse",
    "preload",
    "print_profile",
    "print_table",
    "quiet_kafka_logs",
    "run_async",
    "stack_env",
    "stage_meter",
    "stop_stage",
    "topic_counts",
    "watch",
]


def local_clickhouse() -> str:
    """The ClickHouse server to benchmark against, without a database: EVENTPIPE_TEST_CLICKHOUSE, else
    the local server's writer URL (deploy/local/clickhouse.sh writes its password to server.json; its
    passwordless ``default`` user may read nothing); "" when neither exists."""
    if os.environ.get("EVENTPIPE_TEST_CLICKHOUSE"):
        return os.environ["EVENTPIPE_TEST_CLICKHOUSE"]
    server = LocalServer.read(LOCAL_DIR / "clickhouse")
    return server.url(database="") if server is not None else ""


def clickhouse_server_pid() -> int | None:
    """The local ClickHouse server started by deploy/local/clickhouse.sh, if that is what is running."""
    try:
        pid = int((LOCAL_DIR / "clickhouse" / "server.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"clickhouse" in cmdline else None


def stack_env(kafka: str, home: Path, prefix: str, **more: str) -> dict[str, str]:
    """The environment of a benchmark's stage subprocesses: this one's, plus the broker, a state directory,
    a topic prefix and a free gateway port on loopback of the run's own; ``more`` adds EVENTPIPE_<NAME>."""
    return {
        **os.environ,
        "EVENTPIPE_KAFKA_BOOTSTRAP": kafka,
        "EVENTPIPE_PORT": str(_free_port()),
        "EVENTPIPE_HOST": "127.0.0.1",
        "EVENTPIPE_HOME": str(home),
        "EVENTPIPE_TOPIC_PREFIX": prefix,
        **{f"EVENTPIPE_{name.upper()}": value for name, value in more.items()},
    }


def stage_meter(stage: str, pid: int | None = None, clickhouse: bool = False) -> CpuMeter:
    """A CPU meter over this process, a stage subprocess, the local broker (and ClickHouse server)."""
    meter = CpuMeter()
    meter.pids = {"bench": os.getpid(), stage: pid, "broker": _broker_pid()}
    if clickhouse:
        meter.pids["clickhouse"] = clickhouse_server_pid()
    return meter


def cpu_line(usage: dict[str, float], seconds: float, count: int, unit: str = "event") -> str:
    """``name X% of a core (µs/unit)`` for every measured process, then other processes and the machine."""
    if not usage or seconds <= 0:
        return ""
    parts = []
    for name, spent in usage.items():
        if name in ("machine", "others"):
            continue
        per = f" ({spent / count * 1e6:.0f} µs/{unit})" if count else ""
        parts.append(f"{name} {spent / seconds:.0%} of a core{per}")
    if "others" in usage:
        parts.append(f"other processes {usage['others'] / seconds:.0%} of a core")
    if "machine" in usage:
        parts.append(f"machine {usage['machine']:.0%} of {os.cpu_count()} cores busy")
    line = "CPU: " + ", ".join(parts)
    if usage.get("others", 0.0) / seconds > 0.25:
        line += "\n    (other processes were busy during this phase: its figures are disturbed; rerun when quiet)"
    return line


try:  # resolved here, in the parent: the child only makes the call (no dlopen between fork and exec)
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the bench process dies (killed, crashed), so a stage
    never outlives its benchmark (Linux prctl PR_SET_PDEATHSIG = 1; a no-op elsewhere)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` where SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C: the benchmark's
    ``finally`` blocks still stop its stages, delete its topics and drop its databases."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return asyncio.run(main)
    finally:
        signal.signal(signal.SIGTERM, previous)


class Stage:
    """``python -m eventpipe.cli <stage>`` as a subprocess (optionally under cProfile), output in a log."""

    def __init__(self, stage: str, env: dict[str, str], home: Path, profile: Path | None = None) -> None:
        self.stage = stage
        self.log = home / f"{stage}.log"
        cmd = [sys.executable, "-m", "eventpipe.cli", stage]
        if profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "eventpipe.cli", stage]
        home.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float | None:
        return _proc_cpu_s(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            # The log lives in the run's temporary home, which the clean-up deletes: keep a copy to read.
            kept = Path(tempfile.gettempdir()) / f"eventpipe-bench-{self.stage}-{self.proc.pid}.log"
            shutil.copyfile(self.log, kept)
            raise RuntimeError(f"{self.stage} exited with {self.proc.returncode} (whole log: {kept}):\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM (a clean shutdown: a profile is written), SIGKILL after 30 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


@dataclasses.dataclass
class Progress:
    """When a stage's output first appeared and when it was complete, from a polled counter.

    ``rate`` counts only what was written between the first and the last observation, so the
    stage's start-up (imports, group join, first fetch) is not in it."""

    expected: int
    spawned: float
    first_at: float | None = None
    first_count: int = 0
    done_at: float | None = None
    final_count: int = 0
    cpu_first: float | None = None
    cpu_done: float | None = None

    @property
    def seconds(self) -> float:
        return (self.done_at or 0.0) - (self.first_at or 0.0)

    @property
    def measured(self) -> int:
        return self.expected - self.first_count

    @property
    def rate(self) -> float:
        return self.measured / self.seconds if self.first_at and self.done_at and self.seconds > 0 else 0.0

    @property
    def startup_s(self) -> float:
        return (self.first_at or self.spawned) - self.spawned

    @property
    def cpu_share(self) -> float | None:
        """CPU of the stage between first and last observation, as a share of one core."""
        if self.cpu_first is None or self.cpu_done is None or self.seconds <= 0:
            return None
        return (self.cpu_done - self.cpu_first) / self.seconds


async def watch(
    progress: Progress, count: Callable[[], Awaitable[int]], stage: Stage, meter: CpuMeter, timeout_s: float,
    interval_s: float = 0.05, on_first: Callable[[], Awaitable[None]] | None = None, stall_s: float = 30.0,
) -> tuple[CpuSample | None, CpuSample]:
    """Poll ``count`` until it reaches ``progress.expected``; fills ``progress`` and returns the CPU
    samples taken at the first and at the last observation (``on_first`` runs at the first one).
    Raises after ``timeout_s`` in all, or when the count stopped moving for ``stall_s``."""
    deadline = time.perf_counter() + timeout_s
    first_sample = None
    last_n, last_change = -1, time.perf_counter()
    while True:
        stage.check_alive()
        n = await count()
        now = time.perf_counter()
        if n != last_n:
            last_n, last_change = n, now
        elif progress.first_at is not None and now - last_change > stall_s:
            raise RuntimeError(
                f"{stage.stage}: stalled at {n:,} of {progress.expected:,} (no progress for {stall_s:.0f} s, "
                f"{now - progress.first_at:.0f} s after the first output); log:\n{stage.tail()}"
            )
        if n and progress.first_at is None:
            progress.first_at, progress.first_count = now, n
            progress.cpu_first = stage.cpu_s()
            first_sample = meter.sample()
            if on_first is not None:
                await on_first()
        if n >= progress.expected:
            progress.done_at, progress.final_count = now, n
            progress.cpu_done = stage.cpu_s()
            return first_sample, meter.sample()
        if now > deadline:
            raise RuntimeError(
                f"{stage.stage}: {n:,} of {progress.expected:,} after {timeout_s:.0f} s; log:\n{stage.tail()}"
            )
        await asyncio.sleep(interval_s)


async def preload(prod: AIOKafkaProducer, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> float:
    """Send every (key, value) back to back and await all acks; returns the seconds it took."""
    started = time.perf_counter()
    futures = [await prod.send(topic, value, key=key) for key, value in messages]
    await asyncio.gather(*futures)
    return time.perf_counter() - started


class TopicCounter:
    """Messages in topics (sum of partitions' end offsets; fresh topics, nothing deleted), reusable."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)

    async def __aenter__(self) -> TopicCounter:
        await self.consumer.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.consumer.stop()

    async def count(self, topic: str, partitions: int) -> int:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum((await self.consumer.end_offsets(tps)).values())


async def topic_counts(bootstrap: str, topics: Sequence[str], partitions: int) -> dict[str, int]:
    async with TopicCounter(bootstrap) as counter:
        return {t: await counter.count(t, partitions) for t in topics}


async def _delete_groups(bootstrap: str, prefix: str) -> list[str]:
    """Consumer groups named ``<prefix>…`` (aiokafka's admin has no delete_consumer_groups)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix)]
        deleted = []
        for group in groups:
            coordinator = await admin.find_coordinator(group)
            response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
            if all(code == 0 for _, code in response.results):
                deleted.append(group)
        return deleted
    finally:
        await admin.close()


async def delete_kafka_state(bootstrap: str, prefix: str) -> None:
    """Delete the run's topics and consumer groups; say what is left behind instead of raising."""
    try:
        deleted = await _delete_topics(bootstrap, prefix)
        names = ", ".join(sorted(n.removeprefix(prefix) for n in deleted))
        print(f"   deleted {len(deleted)} topics {prefix}{{{names}}}")
    except Exception as exc:  # cleanup must not hide the figures
        print(f"   could not delete topics {prefix}*: {exc!r}")
    try:
        groups = await _delete_groups(bootstrap, prefix)
        if groups:
            print(f"   deleted {len(groups)} consumer groups {prefix}{{"
                  f"{', '.join(sorted(g.removeprefix(prefix) for g in groups))}}}")
    except Exception as exc:
        print(f"   could not delete consumer groups {prefix}*: {exc!r} (the broker expires them)")


def print_table(rows: Sequence[Sequence[str]], left: int = 1) -> None:
    """First row is the header; the first ``left`` columns are left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  " + "  ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                                     strict=True))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_profile(path: Path | None, what: str, top: int = 25) -> None:
    if path is None:
        return
    if not path.exists():
        print(f"== {what} profile: {path} was not written (did the process exit cleanly?)")
        return
    print(f"== {what} profile ({path}), top functions by own time")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def quiet_kafka_logs() -> None:
    """aiokafka warns while freshly created topics propagate ("Topic … not found in cluster metadata")."""
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)  # logs that one as an error


def stop_stage(stage: Stage | None) -> None:
    """Stop a stage subprocess during clean-up and print its exit code (never raises)."""
    if stage is None:
        return
    try:
        print(f"   {stage.stage} stopped (exit code {stage.stop()})")
    except Exception as exc:
        print(f"   could not stop {stage.stage} (pid {stage.pid}): {exc!r}")
