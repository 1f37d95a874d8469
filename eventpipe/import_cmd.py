"""``eventpipe import FILE|-``: an export into the historical topic, resumable (docs/history.md).

Top to bottom: find the team, open the input (gzip by its magic bytes), decide where to start from the
checkpoint, then for every record: capture's validation (eventpipe/importing.py), one ``send`` to the
historical topic without awaiting it (acks=all), the record marked done when Kafka acks it. Once a
second the frontier (every record before it done) is written as the checkpoint and the progress shown.
Ctrl-C or SIGTERM stop reading; what was sent is flushed, the checkpoint written, the summary printed,
and the exit status is 130 / 143. A second signal exits at once: the checkpoint on disk is still safe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from eventpipe.config import Settings
from eventpipe.exports import Position, Refused, open_input, records
from eventpipe.importing import (
    Checkpoint,
    Frontier,
    Pacer,
    Summary,
    checkpoint_path,
    fingerprint,
    render_summary,
    resume_problem,
    source_size,
    to_message,
)
from eventpipe.kafka import ensure_topics, list_teams, producer, topics_for
from gateway.prepare import Limits

CHUNK = 1000  # records between looks at the clock, the signals and the pacing
MAX_PENDING = 200_000  # records sent and not acked yet before the import waits for Kafka
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Unimportable(Exception):
    """A reason to stop before importing anything (exit 2)."""


def main(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(run(args, settings))
    except Unimportable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def run(args: argparse.Namespace, settings: Settings) -> int:
    api_key, team_id = await _team(settings, args.api_key, args.team_id)
    from_stdin = args.file == "-"
    raw: IO[bytes] = sys.stdin.buffer if from_stdin else _open(Path(args.file))
    checkpoint = None if from_stdin else _checkpoint(args, settings, Path(args.file), team_id)
    if checkpoint is not None and checkpoint.complete:
        print(
            f"{args.file} was imported completely (checkpoint {_cp_path(args, settings, team_id)}); "
            "--restart imports it again (each event is still stored once)",
            file=sys.stderr,
        )
        _print_summary(args, checkpoint.summary, 0.0, interrupted=False)
        return 0
    start = checkpoint.position if checkpoint else Position()
    frontier = Frontier(start, checkpoint.summary if checkpoint else Summary())
    imported_before = frontier.summary.imported
    if start != Position():
        print(f"resuming at line {start.line:,} ({imported_before:,} events imported before)", file=sys.stderr)

    await ensure_topics(settings)
    topic = topics_for(settings).historical_events
    limits = Limits(inflated_bytes=settings.max_event_bytes * 2, max_event_bytes=settings.max_event_bytes)
    prod = producer(settings, linger_ms=20)
    await prod.start()
    stopped = _stop_on_signals()
    failures: list[BaseException] = []
    progress = Progress(source_size(raw), raw, args.progress_interval)
    pacer = Pacer(args.rate) if args.rate else None
    began = time.monotonic()
    sent = 0

    def acked(done: Any) -> Any:
        def callback(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                failures.append(future.exception() or asyncio.CancelledError())
            else:
                done()

        return callback

    def save(complete: bool = False) -> None:
        """Move the frontier (and the summary behind it) on; write it as the checkpoint, if there is one."""
        position = frontier.advance()
        if checkpoint is not None:
            checkpoint.position, checkpoint.complete, checkpoint.summary = position, complete, frontier.summary
            checkpoint.save(_cp_path(args, settings, team_id))

    try:
        now = datetime.now(UTC)
        for n, record in enumerate(records(open_input(raw), start), 1):
            if n == 1:
                progress.begin()
            if record.refused is not None:
                frontier.add(record, record.refused)
            else:
                try:
                    key, value = to_message(record.event or {}, api_key, team_id, now, limits)
                except Refused as refused:
                    frontier.add(record, refused)
                else:
                    (await prod.send(topic, value, key=key)).add_done_callback(acked(frontier.add(record)))
                    sent += 1
            if n % CHUNK and not (pacer and pacer.rate < CHUNK):
                continue
            if stopped or failures:
                break
            now = datetime.now(UTC)
            if pacer is not None:
                await asyncio.sleep(pacer.delay(CHUNK if pacer.rate >= CHUNK else 1, time.monotonic()))
            if len(frontier) > MAX_PENDING:
                await prod.flush()
            else:
                await asyncio.sleep(0)  # let the producer's sender run
            if progress.due():
                save()
                progress.show(frontier.summary.imported, sent)
        await prod.flush()
    finally:
        await prod.stop()  # flushes whatever is still in flight
        progress.close()
    if failures:
        save()
        print(
            f"error: Kafka did not acknowledge an event: {failures[0]!r}; the checkpoint stops before it, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    interrupted = bool(stopped)
    save(complete=not interrupted)
    this_run = frontier.summary.imported - imported_before
    _print_summary(args, frontier.summary, time.monotonic() - began, interrupted, this_run)
    if checkpoint is not None and interrupted:
        where = _cp_path(args, settings, team_id)
        print(f"checkpoint: {where} (run the same command again to resume)", file=sys.stderr)
    return EXIT_CODES[stopped[0]] if interrupted else 0


async def _team(settings: Settings, api_key: str | None, team_id: int | None) -> tuple[str, int]:
    now = time.time()  # a key past its grace imports nothing, as it captures nothing
    for team in await list_teams(settings):
        valid = [k.api_key for k in team.valid_keys(now)]
        if api_key is not None and api_key in valid:
            return api_key, team.team_id
        if api_key is None and team.team_id == team_id and valid:
            return team.main_key(now).api_key, team.team_id
    raise Unimportable(f"no team has {'that api key' if api_key else f'id {team_id}'} (eventpipe teams list)")


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise Unimportable(f"cannot read {path}: {exc.strerror}") from None


def _cp_path(args: argparse.Namespace, settings: Settings, team_id: int) -> Path:
    return args.checkpoint or checkpoint_path(settings.home, Path(args.file), team_id)


def _checkpoint(args: argparse.Namespace, settings: Settings, path: Path, team_id: int) -> Checkpoint:
    """The checkpoint to continue from, or a new one; refuses one that belongs to another file or team."""
    current = fingerprint(path)
    cp_path = _cp_path(args, settings, team_id)
    try:
        existing = None if args.restart else Checkpoint.load(cp_path)
    except (ValueError, KeyError, TypeError) as exc:
        raise Unimportable(f"checkpoint {cp_path} is unreadable ({exc}); --restart starts over") from None
    if existing is not None:
        problem = resume_problem(existing, current, team_id)
        if problem:
            raise Unimportable(
                f"{problem}: not resuming {path} from {cp_path}. Run again with --restart to import it from the "
                "start (events imported before are stored once)"
            )
        return existing
    return Checkpoint(str(path.resolve()), current, team_id)


def _stop_on_signals() -> list[int]:
    """The first SIGINT/SIGTERM stops reading (recorded in the list returned); a second exits at once."""
    stopped: list[int] = []
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stopped:
            print("\nstopped without flushing; the last checkpoint written is safe to resume from", file=sys.stderr)
            os._exit(EXIT_CODES.get(signal.Signals(signum), 1))
        stopped.append(signal.Signals(signum))
        print(
            f"\n{signal.Signals(signum).name}: flushing what was sent, then writing the checkpoint "
            "(again to exit at once)",
            file=sys.stderr,
        )

    for signum in EXIT_CODES:
        loop.add_signal_handler(signum, handle, signum)
    return stopped


def _print_summary(
    args: argparse.Namespace, summary: Summary, seconds: float, interrupted: bool, this_run: int = 0
) -> None:
    if args.json:
        figures = {"seconds": round(seconds, 3), "this_run": this_run, "interrupted": interrupted}
        print(json.dumps({**summary.as_json(), **figures}))
    else:
        print(render_summary(summary, seconds, interrupted, this_run))


class Progress:
    """A tqdm bar over the input's bytes on a terminal; on anything else one tqdm-formatted line per
    interval (a log has no use for carriage returns). Rate and ETA are the bytes' (compressed or not, as
    stored); the events sent and imported (acked) are in the postfix."""

    def __init__(self, size: int | None, raw: IO[bytes], interval_s: float) -> None:
        self.size, self.raw, self.interval_s = size, raw, interval_s
        self.tty = sys.stderr.isatty()
        self.bar: tqdm[Any] | None = None
        self.initial, self.began = 0, time.monotonic()
        self.next = time.monotonic() + interval_s

    def begin(self) -> None:
        """Reading starts here (a resumed import has skipped what was done): rate and ETA count from now."""
        self.initial, self.began = self.position(), time.monotonic()
        if self.tty:
            self.bar = tqdm(
                total=self.size, initial=self.initial, unit="B", unit_scale=True, unit_divisor=1024, desc="import"
            )

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.interval_s
        return True

    def position(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0

    def show(self, imported: int, sent: int) -> None:
        elapsed = time.monotonic() - self.began
        postfix = f"{sent:,} events sent, {imported:,} imported, {sent / elapsed if elapsed else 0:,.0f} events/s"
        if self.bar is not None:
            self.bar.update(self.position() - self.bar.n)
            self.bar.set_postfix_str(postfix, refresh=True)
            return
        line = tqdm.format_meter(
            self.position(),
            self.size,
            elapsed,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            prefix="import",
            postfix=postfix,
            ncols=0,
            initial=self.initial,
        )
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
