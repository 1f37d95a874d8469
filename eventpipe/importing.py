"""The pure parts of ``eventpipe import`` (docs/history.md): one record -> one Kafka message through capture's
own validation, the order in which records are done, the checkpoint, the pacing and the summary.

The command itself (eventpipe/import_cmd.py) only wires these to a file, a producer and a terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import ujson

from eventpipe.exports import Position, Record, Refused
from gateway.errors import CaptureError
from gateway.events import RequestContext
from gateway.prepare import Limits, Message, prepare_text
from gateway.timestamps import FUTURE_LIMIT, parse_time
from gateway.uuid7 import derived_uuid

CHECKPOINT_VERSION = 1
MAX_LISTED = 100  # refused lines listed by number in the summary (and the checkpoint); counts are complete
_FINGERPRINT_BYTES = 1024 * 1024


# -- one record -> one message ---------------------------------------------------------------------------


def import_uuid(event: dict[str, Any], ms: int | None) -> str:
    """The uuid of an exported event without one: a function of its content (sorted keys), so importing
    the same line again gives the same uuid and the events table keeps one row."""
    canonical = ujson.dumps(event, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass")
    return derived_uuid(hashlib.blake2b(b"eventpipe-import\0" + canonical, digest_size=16).digest(), ms)


def to_message(event: dict[str, Any], api_key: str, team_id: int, now: datetime, limits: Limits) -> Message:
    """An exported event -> its Kafka message (key, value) for the historical topic; :class:`Refused`
    when capture would refuse it, or when it has no time of its own (an import must be repeatable: an
    event stamped with the import's time would be a new row each time)."""
    ts = parse_time(event.get("timestamp"))
    if ts is None:
        reason = "missing_timestamp" if event.get("timestamp") is None else "invalid_timestamp"
        raise Refused(reason, "an imported event needs its own timestamp")
    if ts - now > FUTURE_LIMIT:
        raise Refused("timestamp_in_future", f"more than {FUTURE_LIMIT} after the import")
    if "uuid" not in event:
        event = {**event, "uuid": import_uuid(event, _ms(ts))}
    # Exactly the gateway's path: a batch of one event under the import's key (a line's own key never wins).
    payload = {"api_key": api_key, "historical_migration": True, "batch": [event]}
    try:
        text = ujson.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
        prepared = prepare_text(text, RequestContext(now=now, route="batch"), limits, team_of=lambda _key: team_id)
    except CaptureError as err:
        raise Refused(f"{err.code}" + (f" ({err.attr})" if err.attr else ""), err.detail) from None
    except (ValueError, OverflowError, UnicodeError) as exc:
        raise Refused("invalid_event", str(exc)[:200]) from None
    if not prepared.messages:
        raise Refused("dropped_by_capture", "capture drops this event (e.g. $performance_event)")
    (message,) = prepared.messages
    return message


def _ms(ts: datetime) -> int | None:
    try:
        return int(ts.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return None


# -- progress in file order --------------------------------------------------------------------------------


@dataclass
class Summary:
    imported: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    listed: list[tuple[int, int, str]] = field(default_factory=list)  # (line, item, reason), at most MAX_LISTED
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one detail

    def refuse(self, line: int, item: int, refused: Refused) -> None:
        self.refused[refused.reason] += 1
        self.examples.setdefault(refused.reason, refused.detail[:200])
        if len(self.listed) < MAX_LISTED:
            self.listed.append((line, item, refused.reason))

    def as_json(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "refused": dict(self.refused),
            "listed": [list(x) for x in self.listed],
            "examples": self.examples,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Summary:
        return cls(
            int(obj["imported"]),
            Counter({str(k): int(v) for k, v in obj["refused"].items()}),
            [(int(a), int(b), str(c)) for a, b, c in obj["listed"]],
            {str(k): str(v) for k, v in obj.get("examples", {}).items()},
        )


class Frontier:
    """Records in file order, each done when its message is acked (or at once when refused). The
    frontier is where a resumed import starts: after the last record such that it and every record
    before it are done, so a checkpoint never skips a record whose message could still be lost."""

    def __init__(self, start: Position, summary: Summary | None = None) -> None:
        self.position = start
        self.summary = summary or Summary()  # of the records behind the frontier only
        self.pending: deque[list[Any]] = deque()  # [record, done, refused]

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, record: Record, refused: Refused | None = None) -> Callable[[], None]:
        """Track ``record``; returns the callback that marks it done (already done when refused)."""
        entry: list[Any] = [record, refused is not None, refused]
        self.pending.append(entry)

        def done() -> None:
            entry[1] = True

        return done

    def advance(self) -> Position:
        while self.pending and self.pending[0][1]:
            record, _done, refused = self.pending.popleft()
            if refused is None:
                self.summary.imported += 1
            else:
                self.summary.refuse(record.line, record.item, refused)
            self.position = record.next
        return self.position


# -- checkpoint ----------------------------------------------------------------------------------------------


def fingerprint(path: Path) -> dict[str, Any]:
    """What identifies the file a checkpoint belongs to: its size and a hash of its first and last MiB (the
    bytes as stored, compressed or not): an export rewritten, appended to or truncated has another."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_FINGERPRINT_BYTES)
        f.seek(max(0, size - _FINGERPRINT_BYTES))
        tail = f.read(_FINGERPRINT_BYTES)
    return {"size": size, "head": hashlib.sha256(head).hexdigest(), "tail": hashlib.sha256(tail).hexdigest()}


@dataclass
class Checkpoint:
    file: str
    fingerprint: dict[str, Any]
    team_id: int
    position: Position = field(default_factory=Position)
    summary: Summary = field(default_factory=Summary)
    complete: bool = False

    def as_json(self) -> dict[str, Any]:
        p = self.position
        return {
            "version": CHECKPOINT_VERSION,
            "file": self.file,
            "fingerprint": self.fingerprint,
            "team_id": self.team_id,
            "position": {"offset": p.offset, "line": p.line, "item": p.item},
            "summary": self.summary.as_json(),
            "complete": self.complete,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Checkpoint:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {obj.get('version')!r}, this eventpipe writes {CHECKPOINT_VERSION}")
        p = obj["position"]
        return cls(
            str(obj["file"]),
            dict(obj["fingerprint"]),
            int(obj["team_id"]),
            Position(int(p["offset"]), int(p["line"]), int(p["item"])),
            Summary.from_json(obj["summary"]),
            bool(obj["complete"]),
        )

    def save(self, path: Path) -> None:
        """Atomically: a crash while writing leaves the previous checkpoint."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump(self.as_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        if not path.exists():
            return None
        with path.open() as f:
            return cls.from_json(json.load(f))


def checkpoint_path(home: Path, file: Path, team_id: int) -> Path:
    """Default checkpoint of importing ``file`` into ``team_id``: under EVENTPIPE_HOME, named after both."""
    digest = hashlib.sha256(f"{file.resolve()}\0{team_id}".encode()).hexdigest()[:12]
    return home / "imports" / f"{file.name}.team{team_id}.{digest}.json"


def resume_problem(checkpoint: Checkpoint, current: dict[str, Any], team_id: int) -> str | None:
    """Why ``checkpoint`` cannot resume an import of the file as it is now (None: it can)."""
    if checkpoint.team_id != team_id:
        return f"the checkpoint is of an import into team {checkpoint.team_id}, not {team_id}"
    if checkpoint.fingerprint != current:
        was, now = checkpoint.fingerprint.get("size"), current.get("size")
        change = f"size {was:,} -> {now:,} bytes" if was != now else "same size, other content"
        return f"the file changed since the checkpoint was written ({change})"
    return None


# -- pacing --------------------------------------------------------------------------------------------------


class Pacer:
    """``--rate``: events per second on average, with at most ``burst_s`` of catching up after a stall."""

    def __init__(self, rate: float, burst_s: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst_s = burst_s
        self.due: float | None = None  # when the events sent so far are due, at the rate

    def delay(self, n: int, now: float) -> float:
        """Seconds to wait before sending ``n`` more events at ``now``."""
        due = now if self.due is None else max(self.due, now - self.burst_s)
        wait = max(0.0, due - now)
        self.due = due + n / self.rate
        return wait


# -- summary ---------------------------------------------------------------------------------------------------


def render_summary(summary: Summary, seconds: float, interrupted: bool, this_run: int | None = None) -> str:
    """The summary as text; ``this_run``: events imported by this run (a resumed import's summary counts
    the whole file), for its rate."""
    run = summary.imported if this_run is None else this_run
    rate = run / seconds if seconds > 0 else 0.0
    refused = sum(summary.refused.values())
    lines = [
        f"{'interrupted: ' if interrupted else ''}imported {summary.imported:,} events, refused {refused:,} "
        f"({run:,} in {seconds:,.1f} s this run: {rate:,.0f} events/s)"
    ]
    for reason, count in summary.refused.most_common():
        where = [_where(line, item) for line, item, r in summary.listed if r == reason]
        more = count - len(where)
        listed = ", ".join(where) + (f" and {more:,} more" if more and where else "")
        example = summary.examples.get(reason, "")
        lines.append(f"  {reason}: {count:,} ({listed or 'beyond the listed lines'}) e.g. {example}")
    return "\n".join(lines)


def _where(line: int, item: int) -> str:
    return f"line {line}" if item == 0 else f"line {line} item {item + 1}"


def source_size(stream: IO[bytes]) -> int | None:
    """The input's size in bytes when it is a regular file (a pipe has none: no ETA)."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
