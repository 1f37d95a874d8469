"""``eventpipe squash-overrides``: write each live person override into the events it overrides, then
drop the override.

An override (``person_distinct_id_overrides``) says "the events of this team's distinct id belong to
person P now", for events stored before a merge re-pointed the id. Queries resolve every event through
the live overrides (docs/sql.md), so the table must stay small: the squash rewrites ``events.person_id``
of those events to P and deletes the override, after which the event's own column gives the same answer.

Why each step is safe while ingestion runs (docs/sql.md, "Squashing overrides", says it for operators):

1. **Snapshot.** The latest row per (team, distinct id), if it is live and older than ``min_age_s``
   (its Kafka timestamp, i.e. when the processors wrote it). Events the processors emitted *before* the
   merge carry the old person; the age gives a lagging sink time to store them, since an event stored
   after its override is gone would be resolved to the old person.
2. **Rewrite**, per batch: ``ALTER TABLE events UPDATE person_id = … WHERE …``, a mutation with
   ``mutations_sync``, which returns once every part is rewritten. A lightweight ``UPDATE`` is refused by
   ClickHouse 26.9 on our events table (it needs the ``_block_number`` column, i.e. a table setting and
   a rewrite of every part), and a mutation works the same on every server >= 22.2 and ON CLUSTER. Only
   rows whose person differs are selected, so a batch whose events are already right rewrites no part.
   Until the override is deleted, queries read the override, so it does not matter when (or whether)
   the mutation reaches an event.
3. **Re-check**: ids that still have an event with another person (one stored while the mutation ran)
   keep their override; the next run squashes them.
4. **Delete** the squashed overrides: ``ALTER TABLE … DELETE WHERE version <= <snapshot version>``, per
   id. A newer override of the same id (a later merge, version > the snapshot's) is never matched, so it
   survives whether it arrived before or during the squash; older versions go too, since leaving one
   behind would let it become the latest. No tombstone row: one at the snapshot's version would tie with
   the live row under argMax, and ``ReplacingMergeTree(version, is_deleted)`` needs a UInt8 column.

A crash between the steps leaves overrides whose events are already rewritten: queries give the same
answers, and the next run (which then finds no event to rewrite) deletes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

from clickhouse.dialect import Dialect
from clickhouse.schema import OVERRIDES_TABLE

if TYPE_CHECKING:  # the CLI imports this module for its defaults; clickhouse-driver loads only to run
    from clickhouse.store import Store

# A batch's ids appear three times in the mutations (the new person twice, the delete once): with these
# bounds a statement stays well under ClickHouse's default max_query_size (256 KiB).
BATCH_ROWS = 500
BATCH_BYTES = 64 * 1024
# PostHog squashes overrides older than two days; ours has the same reason (a sink lagging behind).
DEFAULT_MIN_AGE_S = 2 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Override:
    team_id: int
    distinct_id: str
    person_id: str
    version: int


@dataclass
class Report:
    overrides: int = 0  # in the snapshot
    squashed: int = 0  # deleted (or that would be, with dry_run)
    kept: int = 0  # left for the next run: an event with another person appeared meanwhile
    events: int = 0  # event rows whose person_id was (would be) rewritten
    batches: int = 0


def quote(text: str) -> str:
    """A ClickHouse string literal of ``text``: printable ASCII as is, every other byte of its UTF-8 as
    ``\\xHH``, so no distinct id can end the literal or smuggle in a byte the parser treats specially."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in "'\\" else f"\\x{byte:02x}")
    return "'" + "".join(out) + "'"


def snapshot_sql(team: int | None, min_age_s: int) -> str:
    """The live override of every distinct id (of one team), older than ``min_age_s``, ordered by team."""
    where = f"WHERE team_id = {int(team)}\n" if team is not None else ""
    return (
        "SELECT team_id, distinct_id, toString(argMax(person_id, version)) AS person, max(version) AS latest_version\n"
        f"FROM {OVERRIDES_TABLE}\n{where}GROUP BY team_id, distinct_id\n"
        f"HAVING argMax(is_deleted, version) = 0 AND argMax(_timestamp, version) <= now() - {int(min_age_s)}\n"
        "ORDER BY team_id, distinct_id"
    )


def batches(overrides: Sequence[Override], rows: int = BATCH_ROWS, size: int = BATCH_BYTES) -> Iterator[list[Override]]:
    """One team per batch (a mutation filters on one team_id, the primary key's prefix), at most
    ``rows`` overrides and about ``size`` bytes of quoted ids."""
    for _, team_overrides in groupby(overrides, key=lambda o: o.team_id):
        batch: list[Override] = []
        used = 0
        for o in team_overrides:
            cost = len(quote(o.distinct_id)) + 40
            if batch and (len(batch) >= rows or used + cost > size):
                yield batch
                batch, used = [], 0
            batch.append(o)
            used += cost
        if batch:
            yield batch


def _team(batch: Sequence[Override]) -> int:
    (team,) = {o.team_id for o in batch}
    return int(team)


def _ids(batch: Sequence[Override]) -> str:
    return "[" + ", ".join(quote(o.distinct_id) for o in batch) + "]"


def new_person(batch: Sequence[Override]) -> str:
    """The override's person for an event of a batch's id, the event's own person_id for any other id.
    transform over strings, not UUIDs: it works on every server version."""
    persons = "[" + ", ".join(quote(o.person_id) for o in batch) + "]"
    return f"toUUID(transform(distinct_id, {_ids(batch)}, {persons}, toString(person_id)))"


def stale_events(batch: Sequence[Override]) -> str:
    """The events of a batch's ids whose person_id is not the override's (other ids never match)."""
    return f"team_id = {_team(batch)} AND person_id != {new_person(batch)}"


def count_stale_sql(batch: Sequence[Override]) -> str:
    return f"SELECT count() FROM events WHERE {stale_events(batch)}"


def stale_ids_sql(batch: Sequence[Override]) -> str:
    return f"SELECT DISTINCT distinct_id FROM events WHERE {stale_events(batch)}"


def rewrite_sql(d: Dialect, batch: Sequence[Override]) -> str:
    return f"{d.alter_table('events')}\nUPDATE person_id = {new_person(batch)}\nWHERE {stale_events(batch)}"


def delete_sql(d: Dialect, batch: Sequence[Override]) -> str:
    """Delete each id's rows up to its snapshot version: a newer override (higher version) of the same
    id stays; ids outside the batch compare with -1 and stay too."""
    versions = "CAST([" + ", ".join(str(int(o.version)) for o in batch) + "], 'Array(Int64)')"
    return (
        f"{d.alter_table(OVERRIDES_TABLE)}\nDELETE WHERE team_id = {_team(batch)}"
        f" AND version <= transform(distinct_id, {_ids(batch)}, {versions}, toInt64(-1))"
    )


def squash(
    store: Store,
    *,
    team: int | None = None,
    min_age_s: int = DEFAULT_MIN_AGE_S,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str], None] = lambda _line: None,
) -> Report:
    """One squash over the overrides older than ``min_age_s`` (of ``team``); see the module's docstring."""
    d = store.dialect
    if not d.modern:
        raise RuntimeError("squash-overrides needs ClickHouse >= 22.2 (mutations_sync, transform over strings)")
    rows = store.query(snapshot_sql(team, min_age_s)).rows
    snapshot = [Override(int(t), str(i), str(p), int(v)) for t, i, p, v in rows]
    report = Report(overrides=len(snapshot))
    work = list(batches(snapshot, rows=batch_rows))
    progress(f"{len(snapshot)} live overrides older than {min_age_s}s in {len(work)} batches")
    for n, batch in enumerate(work, 1):
        started = time.monotonic()
        stale = int(store.query(count_stale_sql(batch)).rows[0][0])
        kept: set[str] = set()
        if not dry_run:
            if stale:
                store.execute(rewrite_sql(d, batch), settings=d.mutation_settings)
                kept = {str(r[0]) for r in store.query(stale_ids_sql(batch)).rows}
            squashed = [o for o in batch if o.distinct_id not in kept]
            if squashed:
                store.execute(delete_sql(d, squashed), settings=d.mutation_settings)
        report.events += stale
        report.kept += len(kept)
        report.squashed += len(batch) - len(kept)
        report.batches += 1
        progress(
            f"batch {n}/{len(work)} team {_team(batch)}: {len(batch) - len(kept)} overrides"
            f"{' (dry run)' if dry_run else ' squashed'}, {stale} events, {len(kept)} kept"
            f" ({time.monotonic() - started:.1f}s)"
        )
    return report
