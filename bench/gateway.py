"""Gateway throughput: the real gateway subprocess against a bare parse-and-produce handler (the ceiling).

Phases, in order, each on its own fresh topics under a unique ``bench<hex>_`` prefix:

1. ``raw producer, pipelined`` — the producer :func:`eventpipe.kafka.producer` builds (acks=all,
   idempotence, linger 5 ms) sends the gateway's own messages (``RawEvent.to_json`` of the bench
   payloads, made with :func:`gateway.events.parse_events`) as fast as it can, then awaits every ack.
2. ``raw producer, N/req`` — the same producer driven the way the gateway drives it: ``concurrency``
   tasks each send N events and await their acks before the next N (N = 1 and N = 100): Kafka's
   part alone, without HTTP.
3. Per producer compression (``--compression``), per shape (single-event ``/capture/``, 100-event
   ``/batch/``): ``bare handler`` — :mod:`bench.bare_gateway`, plain aiohttp + ujson sending each
   event with the same producer settings and awaiting every ack (the ceiling) — then ``gateway`` —
   ``python -m eventpipe.cli gateway``; both subprocesses, loaded from this process over
   ``concurrency`` keep-alive connections with the same bodies, one right after the other.

Figures are printed, never asserted: the machine, the broker and the load generator all share the
same cores, so the numbers compare shapes on one machine rather than promise capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import ujson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.bare_gateway import TOPIC as BARE_TOPIC
from bench.summary import Row, ratio_row
from eventpipe import config
from eventpipe.kafka import create_team, ensure_topics, producer, topics_for
from gateway.decode import loads
from gateway.events import RequestContext, parse_events
from gateway.prepare import Limits, prepare_text

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 100  # events per /batch/ request (and per "request" of the raw 100/req phase)
USERS = 1_000  # distinct_ids the payloads cycle through, so keys spread over every partition
PIPELINED_RUNS = 3  # the ceiling is the best of these (the broker's throughput varies run to run)
POOL_EVENTS = 5_000  # distinct events built; longer runs cycle through them (the gateway mints uuids)
JSON = {"Content-Type": "application/json"}
TARGET = 0.8  # the project's goal for the gateway ÷ its ceiling, per route


# ----------------------------------------------------------------------------------------- options


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gateway benchmark")
    g.add_argument(
        "--events",
        type=int,
        default=_env_int("BENCH_EVENTS", 50_000),
        help="events for the raw producer phases and /batch/ (env BENCH_EVENTS, default 50000)",
    )
    g.add_argument(
        "--capture-events",
        type=int,
        default=_env_int("BENCH_CAPTURE_EVENTS", 0),
        help="events (= requests) for the single-event phases (env BENCH_CAPTURE_EVENTS, default events/2)",
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=_env_int("BENCH_CONCURRENCY", 64),
        help="requests in flight (env BENCH_CONCURRENCY, default 64)",
    )
    g.add_argument(
        "--compression",
        default=os.environ.get("EVENTPIPE_KAFKA_COMPRESSION") or config.DEFAULT_KAFKA_COMPRESSION,
        help="producer compression of every phase, or a comma-separated list to run the bare handler and the "
        f"gateway once per codec ({', '.join(config.KAFKA_COMPRESSIONS)}; env EVENTPIPE_KAFKA_COMPRESSION, "
        f"default {config.DEFAULT_KAFKA_COMPRESSION})",
    )
    g.add_argument(
        "--profile",
        metavar="FILE",
        help="run the gateway under cProfile, write the stats to FILE and print the top functions "
        "(profiling slows the gateway: its figures are then not comparable)",
    )


@dataclasses.dataclass(frozen=True)
class Options:
    events: int
    capture_events: int
    concurrency: int
    kafka: str
    profile: Path | None
    compressions: tuple[str, ...] = (config.DEFAULT_KAFKA_COMPRESSION,)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        events = max(BATCH_SIZE, args.events)
        capture = args.capture_events or max(1, events // 2)
        compressions = tuple(c.strip().lower() for c in str(args.compression).split(",") if c.strip())
        unknown = [c for c in compressions if c not in config.KAFKA_COMPRESSIONS]
        if unknown:
            raise SystemExit(f"--compression: unknown codec(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(config.KAFKA_COMPRESSIONS)}")
        return cls(
            events=events,
            capture_events=capture,
            concurrency=max(1, args.concurrency),
            kafka=args.kafka,
            profile=Path(args.profile).resolve() if args.profile else None,
            compressions=compressions or (config.DEFAULT_KAFKA_COMPRESSION,),
        )


# ---------------------------------------------------------------------------------------- payloads


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(i: int, base: datetime) -> dict[str, Any]:
    """A posthog-js-like event (~1 KB of JSON), distinct per ``i``."""
    ts = base + timedelta(milliseconds=7 * i)
    user = i % USERS
    return {
        "event": "$pageview" if i % 4 else "signup_clicked",
        "distinct_id": f"user-{user:05d}",
        "timestamp": _iso(ts),
        "properties": {
            "$os": "Mac OS X",
            "$os_version": "14.5.0",
            "$browser": "Chrome",
            "$browser_version": 126,
            "$device_type": "Desktop",
            "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
            "$current_url": f"https://shop.example.com/products/{i % 97}?ref=newsletter&utm_source=mail",
            "$host": "shop.example.com",
            "$pathname": f"/products/{i % 97}",
            "$referrer": "https://www.google.com/",
            "$referring_domain": "www.google.com",
            "$screen_height": 1117,
            "$screen_width": 1728,
            "$viewport_height": 980,
            "$viewport_width": 1728,
            "$lib": "web",
            "$lib_version": "1.140.0",
            "$insert_id": uuid.UUID(int=i + 1).hex[:16],
            "$time": ts.timestamp(),
            "$device_id": str(uuid.UUID(int=user + 10**6)),
            "$session_id": str(uuid.UUID(int=user + 2 * 10**6)),
            "$window_id": str(uuid.UUID(int=user + 3 * 10**6)),
            "$pageview_id": str(uuid.UUID(int=i + 4 * 10**6)),
            "plan": ("free", "pro", "enterprise")[user % 3],
            "cart_items": i % 5,
            "experiment": {"variant": "b" if i % 2 else "control", "flags": ["new-nav", "dark-mode"]},
        },
    }


@dataclasses.dataclass
class Payloads:
    capture_bodies: list[bytes]  # one event each, token in properties (posthog-js style)
    batch_bodies: list[bytes]  # BATCH_SIZE events each, api_key + sent_at at the top (server SDK style)
    messages: list[tuple[bytes, bytes]]  # (key, value) exactly as the gateway would produce them

    @classmethod
    def build(cls, token: str, site_url: str) -> Payloads:
        now = datetime.now(UTC)
        base = now - timedelta(minutes=30)
        events = [_event(i, base) for i in range(POOL_EVENTS)]
        capture = []
        for e in events:
            single = {**e, "properties": {**e["properties"], "token": token}}
            capture.append(ujson.dumps(single).encode())
        batches = [
            ujson.dumps({"api_key": token, "sent_at": _iso(now), "batch": events[i : i + BATCH_SIZE]}).encode()
            for i in range(0, len(events), BATCH_SIZE)
        ]
        ctx = RequestContext(now=now, ip="127.0.0.1", site_url=site_url, route="batch")
        messages = []
        for body in batches:
            _, raws = parse_events(loads(body), ctx)
            messages += [(r.key(), r.to_json()) for r in raws]
        return cls(capture, batches, messages)

    def parse_cost_us(self, bodies: list[bytes], route: str, per_body: int, min_seconds: float = 0.3) -> float:
        """CPU µs per event of the gateway's pure work on a request's decoded text, as its event loop does
        it (:func:`gateway.prepare.prepare_text`: bounds, JSON decode, validation, uuids, encode; team known)."""
        ctx = RequestContext(now=datetime.now(UTC), ip="127.0.0.1", site_url="http://127.0.0.1", route=route)
        limits = Limits(inflated_bytes=10 * len(max(bodies, key=len)))
        events = 0
        started = time.process_time()
        while True:
            for body in bodies:
                prepare_text(body, ctx, limits, team_of=lambda _token: 1)
            events += len(bodies) * per_body
            spent = time.process_time() - started
            if spent >= min_seconds:
                return spent / events * 1e6


# ------------------------------------------------------------------------------------- CPU meters

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all threads), from /proc; None when unavailable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def _machine_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds summed over all cores since boot, from /proc/stat."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return None
    vals = [int(v) for v in line.split()[1:9]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / _CLK, sum(vals) / _CLK


def _broker_pid() -> int | None:
    """The local broker started by deploy/local/kafka.sh, if that is what is running."""
    local = Path(os.environ.get("EVENTPIPE_LOCAL_DIR", ROOT / ".local"))
    try:
        pid = int((local / "kafka" / "kafka.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"kafka" in cmdline else None


@dataclasses.dataclass
class CpuSample:
    wall: float
    procs: dict[str, float | None]
    machine: tuple[float, float] | None


class CpuMeter:
    """CPU used by named processes (this one, the gateway, the broker) and the machine between samples."""

    def __init__(self) -> None:
        self.pids: dict[str, int | None] = {
            "load generator": os.getpid(), "gateway": None, "bare handler": None, "broker": _broker_pid()
        }

    def sample(self) -> CpuSample:
        procs = {name: _proc_cpu_s(pid) for name, pid in self.pids.items()}
        return CpuSample(time.perf_counter(), procs, _machine_cpu_s())

    @staticmethod
    def usage(a: CpuSample, b: CpuSample) -> dict[str, float]:
        """Name -> CPU seconds used between the samples; ``machine`` -> share of all cores busy (0..1)."""
        out: dict[str, float] = {}
        for name, before in a.procs.items():
            after = b.procs.get(name)
            if before is not None and after is not None:
                out[name] = after - before
        if a.machine and b.machine and b.machine[1] > a.machine[1]:
            busy, total = b.machine[0] - a.machine[0], b.machine[1] - a.machine[1]
            out["machine"] = busy / total
            # Busy CPU seconds not explained by the processes we know (another workload on the machine).
            wall = b.wall - a.wall
            known = sum(v for k, v in out.items() if k != "machine")
            out["others"] = max(0.0, busy / total * (os.cpu_count() or 1) * wall - known)
        return out


# ------------------------------------------------------------------------------------------ results


@dataclasses.dataclass
class Result:
    name: str
    events: int
    requests: int
    seconds: float
    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    produce_mean_s: float | None = None  # the gateway's own mean publish (Kafka ack) time per request
    log_bytes: int | None = None  # what the local broker's log of the phase's topic grew by

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: int) -> float | None:
        if len(self.latencies) < 2:
            return None
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    def cpu_line(self) -> str:
        if not self.cpu:
            return ""
        parts = []
        for name in ("gateway", "bare handler", "load generator", "broker"):
            # A server idle in this phase (the bare handler while the gateway is loaded) is left out.
            idle = name in ("gateway", "bare handler") and self.cpu.get(name, 0.0) < 0.01 * self.seconds
            if name in self.cpu and not idle:
                spent = self.cpu[name]
                per_event = f" ({spent / self.events * 1e6:.0f} µs/event)" if self.events else ""
                parts.append(f"{name} {spent / self.seconds:.0%} of a core{per_event}")
        if "others" in self.cpu:
            parts.append(f"other processes {self.cpu['others'] / self.seconds:.0%} of a core")
        if "machine" in self.cpu:
            parts.append(f"machine {self.cpu['machine']:.0%} of {os.cpu_count()} cores busy")
        line = "CPU: " + ", ".join(parts)
        if self.cpu.get("others", 0.0) / self.seconds > 0.25:
            line += "\n    (other processes were busy during this phase: its figures are disturbed; rerun when quiet)"
        return line


def _print_result(r: Result) -> None:
    p50, p99 = r.percentile_ms(50), r.percentile_ms(99)
    lat = f", latency p50 {p50:.1f} ms p99 {p99:.1f} ms" if p50 is not None and p99 is not None else ""
    reqs = f" / {r.requests:,} requests" if r.requests else ""
    rate = f"{r.events_per_s:,.0f} events/s" + (f", {r.requests_per_s:,.0f} requests/s" if r.requests else "")
    print(f"  {r.name}: {r.events:,} events{reqs} in {r.seconds:.2f} s -> {rate}{lat}")
    if r.produce_mean_s is not None:
        print(f"    gateway's own publish time (send + acks=all) per request: mean {r.produce_mean_s * 1000:.1f} ms")
    if r.log_bytes is not None and r.events:
        print(f"    broker log: {r.log_bytes / r.events:,.0f} B per event written (local broker's segment files)")
    if r.failures:
        print(f"    FAILED requests: {dict(r.failures)} (not counted in events/s)")
    if r.cpu:
        print(f"    {r.cpu_line()}")


# ------------------------------------------------------------------------------- raw producer phases


async def _measured(meter: CpuMeter, fn: Callable[[], Awaitable[Result]]) -> Result:
    before = meter.sample()
    result = await fn()
    result.cpu = CpuMeter.usage(before, meter.sample())
    return result


async def raw_pipelined(prod: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]], n: int) -> Result:
    """Send n messages back to back (send() only waits when the accumulator is full), then await all acks."""
    started = time.perf_counter()
    futures = []
    for i in range(n):
        key, value = messages[i % len(messages)]
        futures.append(await prod.send(topic, value, key=key))
    acks = await asyncio.gather(*futures, return_exceptions=True)
    seconds = time.perf_counter() - started
    failures = Counter(type(a).__name__ for a in acks if isinstance(a, BaseException))
    return Result("raw producer, pipelined", n - sum(failures.values()), 0, seconds, failures=failures)


async def raw_shaped(
    prod: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]], n_requests: int, per_request: int,
    concurrency: int,
) -> Result:
    """``concurrency`` tasks each send ``per_request`` messages and await their acks, like gateway requests."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    next_request = 0

    async def worker() -> None:
        nonlocal next_request
        while next_request < n_requests:
            r = next_request
            next_request += 1
            t = time.perf_counter()
            futures = []
            for j in range(per_request):
                key, value = messages[(r * per_request + j) % len(messages)]
                futures.append(await prod.send(topic, value, key=key))
            try:
                await asyncio.gather(*futures)
            except Exception as exc:  # counted, reported, never raised: this is a benchmark
                failures[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    ok = len(latencies)
    name = f"raw producer, {per_request}/req x{concurrency}"
    return Result(name, ok * per_request, ok, seconds, latencies, failures)


# ------------------------------------------------------------------------------------ gateway phases


GATEWAY = ("eventpipe.cli", "gateway")
BARE = ("bench.bare_gateway",)


class Gateway:
    """``python -m eventpipe.cli gateway`` (or ``module`` = :data:`BARE`, the bare handler) as a subprocess,
    optionally under cProfile."""

    def __init__(
        self, env: dict[str, str], home: Path, profile: Path | None, module: tuple[str, ...] = GATEWAY
    ) -> None:
        self.env = env
        self.port = int(env["EVENTPIPE_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"{module[-1].rsplit('.', 1)[-1]}.log"
        self.profile = profile
        cmd = [sys.executable, "-m", *module]
        if profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", *module]
        home.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.stem} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.url + "/_ready", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.log.stem} not ready after {timeout_s}s:\n{self.tail()}")

    async def produce_totals(self, session: aiohttp.ClientSession) -> tuple[float, float] | None:
        """(sum of seconds, count) of the gateway's produce-latency histogram, from /metrics."""
        try:
            async with session.get(self.url + "/metrics") as r:
                text = await r.text()
        except aiohttp.ClientError:
            return None
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("eventpipe_gateway_produce_seconds_sum", "eventpipe_gateway_produce_seconds_count"):
                values[name.rsplit("_", 1)[1]] = float(value)
        return (values["sum"], values["count"]) if len(values) == 2 else None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.returncode is not None:
            return  # stopped already (the previous codec's, stopped before the next started)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        print(f"   {self.log.stem} stopped (exit code {self.proc.returncode})")


async def http_load(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], n_requests: int, per_request: int,
    concurrency: int, name: str,
) -> Result:
    """``concurrency`` tasks POST bodies back to back over keep-alive connections; latency per request."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    next_request = 0

    async def worker() -> None:
        nonlocal next_request
        while next_request < n_requests:
            body = bodies[next_request % len(bodies)]
            next_request += 1
            t = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=JSON) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError as exc:
                failures[type(exc).__name__] += 1
                continue
            if status != 200:
                failures[f"HTTP {status}"] += 1
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    ok = len(latencies)
    return Result(name, ok * per_request, ok, seconds, latencies, failures)


def _log_bytes(topic: str) -> int | None:
    """Bytes in the local broker's log segments of ``topic`` (None without a local single-node broker)."""
    data = Path(os.environ.get("EVENTPIPE_LOCAL_DIR", ROOT / ".local")) / "kafka" / "data"
    if _broker_pid() is None or not data.is_dir():
        return None
    return sum(f.stat().st_size for part in data.glob(f"{topic}-*") for f in part.glob("*.log"))


async def gateway_phase(
    gw: Gateway, session: aiohttp.ClientSession, meter: CpuMeter, route: str, bodies: list[bytes], n_requests: int,
    per_request: int, concurrency: int, label: str = "gateway", topic: str | None = None,
) -> Result:
    url = f"{gw.url}/{route}/"
    name = f"{label} /{route}/ ({per_request}/req x{concurrency})"
    # Warm-up (not counted): opens the connections, fills the producer's metadata and the registry.
    warmup = min(concurrency, max(1, n_requests // 10))
    await http_load(session, url, bodies, warmup, per_request, concurrency, name)
    before = await gw.produce_totals(session)
    log_before = _log_bytes(topic) if topic else None
    result = await _measured(
        meter, lambda: http_load(session, url, bodies, n_requests, per_request, concurrency, name)
    )
    after = await gw.produce_totals(session)
    if before and after and after[1] > before[1]:
        result.produce_mean_s = (after[0] - before[0]) / (after[1] - before[1])
    if topic and log_before is not None and (log_after := _log_bytes(topic)) is not None:
        result.log_bytes = log_after - log_before
    return result


# ------------------------------------------------------------------------------------------ plumbing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(env: dict[str, str]) -> config.Settings:
    """Settings exactly as the gateway subprocess will load them from ``env``."""
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("EVENTPIPE_")})
        return config.load()
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def _topic_messages(bootstrap: str, topic: str, partitions: int) -> int:
    """Messages in a topic: the sum of its partitions' end offsets (fresh topic, nothing deleted)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _delete_topics(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def _suffix(key: str) -> str:
    """``@codec`` of a result key for a compression after the first (``capture@lz4``), else ""."""
    return key[key.index("@"):] if "@" in key else ""


def _cpu_us(r: Result | None, name: str) -> str:
    if r is None or name not in r.cpu or not r.events:
        return "-"
    return f"{r.cpu[name] / r.events * 1e6:.0f}"


def _summary(results: dict[str, Result], ceiling: Result) -> None:
    rows: list[tuple[str, ...]] = [(
        "phase", "events/s", "req/s", "p50 ms", "p99 ms", "CPU µs/ev", "broker µs/ev", "log B/ev",
        "÷ bare same shape", "÷ raw same shape", "÷ raw pipelined",
    )]
    raw_shape = {"capture": results.get("raw1"), "batch": results.get("raw100")}
    for key, r in results.items():
        p50, p99 = r.percentile_ms(50), r.percentile_ms(99)
        base = key.removesuffix(_suffix(key))
        bare = results.get(f"bare_{key}") if base in ("capture", "batch") else None
        shape = raw_shape.get(base.removeprefix("bare_")) if not _suffix(key) else None
        own = ("gateway" if base in ("capture", "batch") else "bare handler" if base.startswith("bare_")
               else "load generator")
        rows.append((
            r.name,
            f"{r.events_per_s:,.0f}",
            f"{r.requests_per_s:,.0f}" if r.requests else "-",
            f"{p50:.1f}" if p50 is not None else "-",
            f"{p99:.1f}" if p99 is not None else "-",
            _cpu_us(r, own),
            _cpu_us(r, "broker"),
            f"{r.log_bytes / r.events:,.0f}" if r.log_bytes is not None and r.events else "-",
            _ratio(r.events_per_s, bare.events_per_s) if bare else "-",
            _ratio(r.events_per_s, shape.events_per_s) if shape else "-",
            _ratio(r.events_per_s, ceiling.events_per_s),
        ))
    from bench.common import print_table  # bench.common imports this module: imported when used

    print_table(rows)
    for codec_key in dict.fromkeys(_suffix(k) for k in results):
        ratios = []
        for shape in ("capture", "batch"):
            r, bare = results.get(shape + codec_key), results.get(f"bare_{shape}{codec_key}")
            if r and bare:
                ratios.append(f"/{shape}/ {_ratio(r.events_per_s, bare.events_per_s)}")
        if ratios:
            codec = codec_key.removeprefix("@") or "first"
            print(f"   gateway ÷ bare handler ({codec} compression; target >= 0.8): {', '.join(ratios)}")


async def _http_phases(
    opts: Options, env: dict[str, str], settings: config.Settings, payloads: Payloads, meter: CpuMeter,
    results: dict[str, Result], codec: str, servers: list[Gateway],
) -> None:
    """The bare handler and the gateway with producer compression ``codec``, each shape on both, the
    bare handler first and the gateway right after it (the broker and the machine as alike as can be).
    ``servers`` holds the subprocesses running, for the caller's clean-up; the previous codec's are stopped."""
    first = codec == opts.compressions[0]
    suffix = "" if first else f"@{codec}"
    while servers:
        servers.pop().stop()
    cenv = {**env, "EVENTPIPE_KAFKA_COMPRESSION": codec}
    print(f"-- bare handler (bench.bare_gateway) and gateway (python -m eventpipe.cli gateway), producer "
          f"compression {codec}, loaded over HTTP from this process")
    if opts.profile and first:
        print(f"   (gateway under cProfile -> {opts.profile}: its figures are slowed by the profiler)")
    home = settings.home / codec
    bare = Gateway({**cenv, "EVENTPIPE_PORT": str(_free_port())}, home, None, BARE)
    servers.append(bare)
    gw = Gateway(cenv, home, opts.profile if first else None)
    servers.append(gw)
    meter.pids["bare handler"], meter.pids["gateway"] = bare.proc.pid, gw.proc.pid
    n_batch = max(1, opts.events // BATCH_SIZE)
    shapes = (("capture", payloads.capture_bodies, opts.capture_events, 1),
              ("batch", payloads.batch_bodies, n_batch, BATCH_SIZE))
    connector = aiohttp.TCPConnector(limit=2 * opts.concurrency, limit_per_host=opts.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        await bare.wait_ready(session)
        await gw.wait_ready(session)
        print(f"   bare handler (port {bare.port}) and gateway (port {gw.port}) ready in "
              f"{time.perf_counter() - started:.1f} s")
        topics = {"bare handler": f"{settings.topic_prefix}{BARE_TOPIC}", "gateway": topics_for(settings).raw_events}
        for route, bodies, n_requests, per_request in shapes:
            for key, server, label in ((f"bare_{route}", bare, "bare handler"), (route, gw, "gateway")):
                results[key + suffix] = r = await gateway_phase(
                    server, session, meter, route, bodies, n_requests, per_request, opts.concurrency, label,
                    topics[label],
                )
                if not first:
                    r.name += f" [{codec}]"
                _print_result(r)


# ---------------------------------------------------------------------------------------------- main


async def _main(opts: Options) -> list[Row]:
    cores = os.cpu_count() or 1
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    n_batch = max(1, opts.events // BATCH_SIZE)
    print("== gateway benchmark")
    print(
        f"   {cores} CPU cores shared by the gateway (1 process, 1 event loop), this load generator (aiohttp client"
        f" + producer) and the local Kafka broker:\n   they compete for CPU, so gateway figures are a lower bound"
        f" of what it does on its own cores."
    )
    print(
        f"   kafka {opts.kafka}, topic prefix {prefix}, {opts.concurrency} requests in flight; "
        f"{opts.events:,} events for the raw and /batch/ phases, {opts.capture_events:,} for single-event phases; "
        f"producer compression {', '.join(opts.compressions)}"
    )
    meter = CpuMeter()
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="eventpipe-bench-") as tmp:
        env = {
            **os.environ,
            "EVENTPIPE_KAFKA_BOOTSTRAP": opts.kafka,
            "EVENTPIPE_PORT": str(_free_port()),
            "EVENTPIPE_HOST": "127.0.0.1",
            "EVENTPIPE_HOME": str(Path(tmp) / "home"),
            "EVENTPIPE_TOPIC_PREFIX": prefix,
        }
        settings = _settings({**env, "EVENTPIPE_KAFKA_COMPRESSION": opts.compressions[0]})
        servers: list[Gateway] = []
        try:
            team = await create_team(settings, "bench")
            payloads = Payloads.build(team.api_key, f"http://127.0.0.1:{settings.port}")
            sizes = [len(v) for _, v in payloads.messages]
            print(
                f"   payloads: Kafka message {statistics.mean(sizes):,.0f} B avg, /capture/ body "
                f"{statistics.mean(map(len, payloads.capture_bodies)):,.0f} B, /batch/ body "
                f"{statistics.mean(map(len, payloads.batch_bodies)):,.0f} B ({BATCH_SIZE} events)"
            )
            single_cost = payloads.parse_cost_us(payloads.capture_bodies[:500], "capture", 1)
            batch_cost = payloads.parse_cost_us(payloads.batch_bodies[:5], "batch", BATCH_SIZE)
            print(
                f"   gateway pure-Python work in-process (gateway.prepare.prepare_text: decode, validate, encode): "
                f"{single_cost:.0f} µs/event single, {batch_cost:.0f} µs/event in a batch "
                f"(= at most {1e6 / batch_cost:,.0f} events/s per core for that alone)"
            )

            print("-- raw ceiling: bare aiokafka producer (eventpipe.kafka.producer settings), same messages")
            ceiling_topic = f"{prefix}ceiling"
            await ensure_topics(settings, [NewTopic(ceiling_topic, settings.partitions, 1)])
            prod = producer(settings)
            await prod.start()
            try:
                # Warm-up (not counted): metadata, connections, and a broker JVM that has seen this load.
                await raw_pipelined(prod, ceiling_topic, payloads.messages, min(opts.events, 10_000))
                runs = []
                for attempt in range(1, PIPELINED_RUNS + 1):
                    runs.append(await _measured(
                        meter, lambda: raw_pipelined(prod, ceiling_topic, payloads.messages, opts.events)
                    ))
                    runs[-1].name = f"raw producer, pipelined (run {attempt}/{PIPELINED_RUNS})"
                    _print_result(runs[-1])
                results["raw"] = dataclasses.replace(
                    max(runs, key=lambda r: r.events_per_s), name=f"raw producer, pipelined (best of {len(runs)})"
                )
                results["raw1"] = await _measured(
                    meter,
                    lambda: raw_shaped(prod, ceiling_topic, payloads.messages, opts.capture_events, 1,
                                       opts.concurrency),
                )
                _print_result(results["raw1"])
                results["raw100"] = await _measured(
                    meter,
                    lambda: raw_shaped(prod, ceiling_topic, payloads.messages, n_batch, BATCH_SIZE, opts.concurrency),
                )
                _print_result(results["raw100"])
            finally:
                await prod.stop()

            for codec in opts.compressions:
                await _http_phases(opts, env, settings, payloads, meter, results, codec, servers)
            for topic, kind in ((topics_for(settings).raw_events, ""), (f"{prefix}{BARE_TOPIC}", "bare_")):
                landed = await _topic_messages(opts.kafka, topic, settings.partitions)
                sent = sum(r.events for k, r in results.items() if k.removesuffix(_suffix(k)) in
                           (f"{kind}capture", f"{kind}batch"))
                print(f"   {topic} holds {landed:,} messages ({sent:,} measured + {landed - sent:,} warm-up events)")
        finally:
            for server in servers:
                server.stop()
            try:
                deleted = await _delete_topics(opts.kafka, prefix)
                names = ", ".join(sorted(n.removeprefix(prefix) for n in deleted))
                print(f"   deleted {len(deleted)} topics {prefix}{{{names}}}")
            except Exception as exc:  # cleanup must not hide the figures; say what is left behind
                print(f"   could not delete topics {prefix}*: {exc!r}")

    if "raw" in results:
        print("== summary (÷ bare handler: the issue's ceiling, same shape, same producer compression, same run; "
              "÷ raw: the producer alone, no HTTP)")
        _summary(results, results["raw"])
        print(f"   note: only {cores} cores, shared by the gateway, the bare handler, the load generator and the "
              f"broker. The gateway is one process (one event loop), so it can use at most one core: when it shows "
              f"~100% of a core while the machine is not fully busy, the gateway's own CPU is the limit.")
    if opts.profile and opts.profile.exists():
        print(f"== gateway profile ({opts.profile}), top functions by own time")
        stats = pstats.Stats(str(opts.profile))
        stats.sort_stats("tottime").print_stats(25)
    return figures(results)


def figures(results: dict[str, Result]) -> list[Row]:
    """Headline rows for the one table of ``python -m bench``: each route ÷ the bare handler of its shape (the
    issue's ceiling), with the first compression measured; the raw producer when the bare phase is missing."""
    ceilings = {key: f"bare_{key}" if f"bare_{key}" in results else raw
                for key, raw in (("capture", "raw1"), ("batch", "raw100"))}
    return [ratio_row("gateway", f"/{key}/ events/s", results[key].events_per_s, results[ceiling].events_per_s,
                      "events/s", TARGET)
            for key, ceiling in ceilings.items() if key in results and ceiling in results]


def run(args: argparse.Namespace) -> list[Row]:
    return asyncio.run(_main(Options.from_args(args)))
