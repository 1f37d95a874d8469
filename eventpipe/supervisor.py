"""``eventpipe run``: gateway, processors and sink as child processes, restarted when they die, stopped
in order.

Children run in their own sessions so a terminal Ctrl-C reaches only the supervisor, which then stops
the gateway first (no new events), then the processors, then the sink (which flushes its last batch).
A stage that exits on its own is restarted with backoff; the supervisor gives up (and stops the rest)
only when one fails again and again within a minute, and then prints that stage's last output.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

from eventpipe.config import PACKAGE_ROOT, Settings
from eventpipe.kafka import ensure_topics
from eventpipe.restart import RestartPolicy

STAGES = ("gateway", "processor", "sink")
CONSUMERS = ("processor", "sink")
TAIL_LINES = 20


def run_dir(settings: Settings) -> Path:
    path = settings.home / "run"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the sink's admin secret
    return path


def _say(msg: str) -> None:
    print(f"[eventpipe] {msg}", flush=True)


def mark_ready(settings: Settings, stage: str) -> None:
    """Called by a stage once it consumes (partitions assigned): the supervisor waits for these."""
    (run_dir(settings) / f"{stage}.ready").write_text(str(os.getpid()))


def clear_ready(settings: Settings, stage: str) -> None:
    (run_dir(settings) / f"{stage}.ready").unlink(missing_ok=True)


def stages_ready(settings: Settings, stages: tuple[str, ...] = CONSUMERS) -> bool:
    return all((run_dir(settings) / f"{s}.ready").exists() for s in stages)


def gateway_ready(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"http://{settings.host}:{settings.port}/_ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def curl_example(settings: Settings) -> str:
    return (
        f"curl -s http://{settings.host}:{settings.port}/capture/ -H 'Content-Type: application/json' "
        '-d \'{"api_key": "<API_KEY>", "event": "signed_up", "properties": {"distinct_id": "user-1"}}\''
    )


class Child:
    """One running stage: its process and the last lines it printed (echoed to our stdout as they come),
    so that when it keeps failing the supervisor can say why."""

    def __init__(self, stage: str, proc: subprocess.Popen[bytes]) -> None:
        self.stage, self.proc = stage, proc
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.pump = threading.Thread(target=self._pump, name=f"{stage}-output", daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            print(line, flush=True)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Runs the stages, restarts one that dies (backoff, see :class:`RestartPolicy`), gives up only on a
    stage that keeps failing, and restarts the local ClickHouse server if it was running and stops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: dict[str, Child] = {}
        self.policies = {stage: RestartPolicy() for stage in (*STAGES, "clickhouse")}
        self.restart_at: dict[str, float] = {}
        self.stopping = False
        self.clickhouse = LocalClickHouse.watch(settings)

    def spawn(self, stage: str) -> None:
        if stage in CONSUMERS:
            clear_ready(self.settings, stage)  # a killed stage leaves its marker behind
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventpipe.cli", stage],
            start_new_session=True,
            env=os.environ.copy(),
            preexec_fn=_die_with_parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.children[stage] = Child(stage, proc)
        # Recorded for `eventpipe status`, and so `eventpipe down` can clean up even if this supervisor
        # is killed outright.
        pids = {name: child.proc.pid for name, child in self.children.items()}
        (run_dir(self.settings) / "stages.json").write_text(json.dumps(pids))

    def start_children(self) -> None:
        for stage in STAGES:
            self.spawn(stage)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            self.check_children()
            gw = gateway_ready(self.settings)
            groups = stages_ready(self.settings)
            if gw and groups:
                return
            status = f"waiting: gateway {'ready' if gw else 'starting'}, consumers {'ready' if groups else 'joining'}"
            if status != last:
                _say(status)
                last = status
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready in {timeout_s:.0f}s; see the stage logs above")

    def check_children(self) -> None:
        """Notice stages that exited, restart those whose backoff is over; RuntimeError to give up."""
        if self.stopping:
            return
        now = time.monotonic()
        for stage, child in self.children.items():
            code = child.proc.poll()
            if code is None or stage in self.restart_at:
                continue
            child.pump.join(timeout=2)  # its last words
            self._schedule(stage, _exit_reason(code), now, list(child.tail))
        if self.clickhouse is not None and "clickhouse" not in self.restart_at and not self.clickhouse.alive():
            self._schedule("clickhouse", "the local ClickHouse server stopped", now, self.clickhouse.log_tail())
        for stage, at in list(self.restart_at.items()):
            if now < at:
                continue
            del self.restart_at[stage]
            if stage == "clickhouse":
                assert self.clickhouse is not None
                _say("starting the local ClickHouse server again")
                self.clickhouse.start()
            else:
                self.spawn(stage)
                _say(f"{stage} restarted (pid {self.children[stage].proc.pid})")

    def _schedule(self, stage: str, reason: str, now: float, tail: list[str]) -> None:
        policy = self.policies[stage]
        delay = policy.on_exit(now)
        if delay is None:
            last = "\n".join(f"    {line}" for line in tail[-TAIL_LINES:]) or "    (no output)"
            raise RuntimeError(
                f"{stage} failed {policy.recent} times within {policy.window_s:.0f}s ({reason}); giving up. "
                f"Its last output:\n{last}"
            )
        _say(f"{stage} {reason}; restarting in {delay:.1f}s ({policy.recent} failure(s) in {policy.window_s:.0f}s)")
        self.restart_at[stage] = now + delay

    def stop(self) -> None:
        self.stopping = True
        for stage in STAGES:  # in pipeline order: the sink flushes last
            child = self.children.get(stage)
            if child is None or child.proc.poll() is not None:
                continue
            _say(f"stopping {stage}")
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _say(f"{stage} did not stop in 30 s; killing it")
                child.proc.kill()
                child.proc.wait()
            child.pump.join(timeout=2)


class LocalClickHouse:
    """The local ClickHouse server of deploy/local/clickhouse.sh, when it is the store: watched, and
    started again by the same script if it stops (not stopped by us: `make down` does that)."""

    def __init__(self, script: Path, pidfile: Path, log: Path) -> None:
        self.script, self.pidfile, self.log = script, pidfile, log

    @classmethod
    def watch(cls, settings: Settings) -> LocalClickHouse | None:
        script = PACKAGE_ROOT / "deploy" / "local" / "clickhouse.sh"
        directory = settings.local_dir / "clickhouse"
        if settings.clickhouse_url or not script.exists():
            return None
        server = cls(script, directory / "server.pid", directory / "server.log")
        return server if server.alive() else None  # not started by the scripts: not ours to watch

    def alive(self) -> bool:
        return _alive(self.pidfile)

    def log_tail(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            return []

    def start(self) -> None:
        # The script waits for readiness (bounded); the stages retry ClickHouse meanwhile.
        env = {**os.environ, "EVENTPIPE_LOCAL_DIR": str(self.pidfile.parent.parent), "EVENTPIPE_PYTHON": sys.executable}
        subprocess.run(["bash", str(self.script), "start"], env=env, check=False, timeout=120)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so a stage never outlives it; the stage then shuts down cleanly as usual."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: `eventpipe down` still cleans up from stages.json


def run(settings: Settings) -> int:
    asyncio.run(ensure_topics(settings))
    sup = Supervisor(settings)
    ready_file = run_dir(settings) / "ready"
    ready_file.unlink(missing_ok=True)
    stop_requested = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # the terminal went away: stop like Ctrl-C
    code = 0
    try:
        _say(f"store: {settings.store.redacted()}  kafka: {settings.kafka_bootstrap}")
        sup.start_children()
        sup.wait_ready()
        ready_file.write_text(str(os.getpid()))
        _say(f"ready. capture URL: http://{settings.host}:{settings.port}/capture/")
        _say("create a team:  eventpipe teams create --name demo")
        _say(f"send an event:  {curl_example(settings)}")
        _say('query:          eventpipe sql "SELECT event, distinct_id, timestamp FROM events"')
        _say("Ctrl-C stops everything")
        while True:
            sup.check_children()
            time.sleep(0.5)
    except KeyboardInterrupt:
        _say("shutting down")
    except (RuntimeError, TimeoutError) as exc:
        _say(f"error: {exc}")
        code = 1
    finally:
        ready_file.unlink(missing_ok=True)
        sup.stop()
        _say("stopped")
    return code


def up(settings: Settings, timeout_s: float = 180) -> int:
    """Start ``eventpipe run`` detached; return once it is ready (or fail, naming the log)."""
    rd = run_dir(settings)
    pidfile, logfile, ready_file = rd / "eventpipe.pid", rd / "eventpipe.log", rd / "ready"
    if _alive(pidfile):
        _say(f"already running (pid {pidfile.read_text().strip()})")
        return 0
    ready_file.unlink(missing_ok=True)
    with logfile.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventpipe.cli", "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _say(f"eventpipe failed to start; see {logfile}")
            if proc.poll() is None:
                proc.terminate()
            return 1
        time.sleep(0.25)
    _say(f"up: capture URL http://{settings.host}:{settings.port}/capture/ (logs: {logfile})")
    _say(f"send an event:  {curl_example(settings)}")
    return 0


def down(settings: Settings) -> int:
    pidfile = run_dir(settings) / "eventpipe.pid"
    if not _alive(pidfile):
        _say("not running")
        pidfile.unlink(missing_ok=True)
        return 0
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.25)
    else:
        os.killpg(pid, signal.SIGKILL)
    _kill_leftover_children(run_dir(settings) / "stages.json")
    pidfile.unlink(missing_ok=True)
    _say("down")
    return 0


def _kill_leftover_children(pids_file: Path) -> None:
    try:
        pids = [int(p) for p in json.loads(pids_file.read_text()).values()]
    except (OSError, ValueError, AttributeError):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            _say(f"killed leftover stage process {pid}")
        except ProcessLookupError:
            pass
    pids_file.unlink(missing_ok=True)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False
