"""A deterministic simulation of the partitioned identity protocol (processors/protocol.py), no broker.

Partitions own two logs (raw events and the identity inbox) and a state that only they read and write.
A scheduler picks, at random, a partition with unread messages and runs one step; crashes are injected
the way a worker dies under Kafka: the state falls back to a prefix of its changelog somewhere after the
last commit, the step in progress is cut at any point (any of its rows and sends out, its writes only
once all of those are, as the runtime orders them), and reading resumes at the committed offsets.
Everything a step sent stays sent (at-least-once).

:meth:`Sim.outcome` reads the rows the way ClickHouse queries do (highest version wins, overrides first)
and returns the reference model's :class:`~tests.identity_model.Outcome`, so the two compare directly.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from eventpipe.contract import RawEvent
from processors import protocol
from processors.identity import personless_id
from tests.identity_model import Event, Outcome, PersonView

RAW, INBOX = "raw", "inbox"


@dataclass
class _Partition:
    state: dict[str, Any] = field(default_factory=dict)
    changelog: list[tuple[str, Any]] = field(default_factory=list)
    durable: int = 0  # changelog entries before this one survive any crash
    logs: dict[str, list[Any]] = field(default_factory=lambda: {RAW: [], INBOX: []})
    read: dict[str, int] = field(default_factory=lambda: {RAW: 0, INBOX: 0})
    committed: dict[str, int] = field(default_factory=lambda: {RAW: 0, INBOX: 0})


class Sim:
    def __init__(self, partitions: int, seed: int, crash_rate: float = 0.0, commit_rate: float = 0.3) -> None:
        self.parts = [_Partition() for _ in range(partitions)]
        self.rng = random.Random(seed)
        self.crash_rate, self.commit_rate = crash_rate, commit_rate
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.crashes = 0
        self.teams: set[int] = set()
        self.steps = 0
        self.clock = 1_000_000  # microseconds; a crash costs the partition a restart (see _crash)

    def partition(self, key: bytes) -> int:
        return zlib.crc32(key) % len(self.parts)

    def capture(self, events: list[Event]) -> None:
        """What the gateway does: each event onto its distinct id's partition, in order."""
        for e in events:
            self.teams.add(e.team_id)
            raw = e.to_raw(f"phc_{e.team_id}")
            raw.team_id = e.team_id
            self.parts[self.partition(protocol.id_key(e.team_id, e.distinct_id))].logs[RAW].append(raw)

    def run(self, max_steps: int = 200_000) -> None:
        while True:
            ready = [(i, t) for i, p in enumerate(self.parts) for t in (RAW, INBOX) if p.read[t] < len(p.logs[t])]
            if not ready:
                return
            i, topic = self.rng.choice(ready)
            self._step(i, topic)
            self.steps += 1
            assert self.steps < max_steps, "the protocol does not settle"

    def _step(self, i: int, topic: str) -> None:
        part = self.parts[i]
        message = part.logs[topic][part.read[topic]]
        self.clock += 1
        if topic == RAW:
            step = protocol.on_raw(part.state, i, message, self.clock, part.read[topic])
        else:
            step = protocol.on_inbox(part.state, i, message, self.clock)
        writes = list(step.writes.items())
        if step.wal is not None:
            writes.insert(0, (step.wal, step.to_json()))
        outputs: list[tuple[str, Any]] = [("row", (kind, row)) for kind, rows in step.rows.items() for row in rows]
        outputs += [("send", s) for s in step.sends]
        crash = self.rng.random() < self.crash_rate
        if crash:
            # The runtime sends a batch's rows and messages, waits for their acks, and only then writes
            # its state (processors/app.py): a crash delivers any subset of the outputs, and a prefix of
            # the writes only if every output got out.
            self.rng.shuffle(outputs)
            sent = self.rng.randint(0, len(outputs))
            writes = writes[: self.rng.randint(0, len(writes))] if sent == len(outputs) else []
            outputs = outputs[:sent]
        for what, item in outputs:
            if what == "row":
                kind, row = item
                self.rows[kind].append(json.loads(json.dumps(row)))
            else:
                key, msg = item
                self.parts[self.partition(key)].logs[INBOX].append(json.loads(json.dumps(msg)))
        for key, value in writes:
            part.state[key] = value
            part.changelog.append((key, value))
        if crash:
            self._crash(part)
            return
        part.read[topic] += 1
        if self.rng.random() < self.commit_rate:  # Faust flushes the changelog, then commits both topics
            part.durable = len(part.changelog)
            part.committed = dict(part.read)

    def _crash(self, part: _Partition) -> None:
        self.crashes += 1
        self.clock += 10_000_000  # the worker is replaced: its successor's clock is ~10 s later
        keep = self.rng.randint(part.durable, len(part.changelog))
        part.changelog = part.changelog[:keep]
        part.state = {}
        for key, value in part.changelog:
            part.state[key] = value
        part.read = dict(part.committed)

    # -- what ClickHouse would answer ---------------------------------------------------------------------
    def outcome(self) -> Outcome:
        latest_map = _latest(self.rows["distinct_ids"], ("team_id", "distinct_id"), "person_id")
        overrides = _latest(self.rows["overrides"], ("team_id", "distinct_id"), "person_id")
        person_rows = _latest_rows(self.rows["persons"], ("id",))
        mapping = {(int(t), d): p for (t, d), p in latest_map.items()}
        ids_of: dict[str, set[str]] = defaultdict(set)
        for (_t, d), p in mapping.items():
            ids_of[p].add(d)
        persons = {
            pid: PersonView(int(r["team_id"]), json.loads(r["properties"]), bool(r["is_identified"]),
                            frozenset(ids_of.get(pid, set())))
            for (pid,), r in person_rows.items()
            if not r["is_deleted"]
        }
        groups = {
            (int(r["team_id"]), int(r["group_type_index"]), r["group_key"]): json.loads(r["group_properties"])
            for r in _latest_rows(self.rows["groups"], ("team_id", "group_type_index", "group_key")).values()
        }
        group_types: dict[int, dict[str, int]] = {team: {} for team in self.teams}
        for part in self.parts:
            for key, value in part.state.items():
                if key.startswith("L:") and key.endswith(":types"):
                    group_types[int(key.split(":")[1])] = dict(value)
        event_person: dict[str, str] = {}
        event_groups: dict[str, tuple[str, ...]] = {}
        team_of: dict[str, int] = {}
        for r in self.rows["events"]:
            team, d = int(r["team_id"]), r["distinct_id"]
            person = r["person_id"]
            if person != personless_id(team, d):  # the model keeps personless rows apart (SQL would not)
                person = overrides.get((team, d), person)  # how docs/sql.md resolves an event's person
            previous = event_person.setdefault(r["uuid"], person)
            assert previous == person, f"event {r['uuid']} stored twice with different persons"
            event_groups[r["uuid"]] = tuple(r[f"$group_{i}"] for i in range(5))
            team_of[r["uuid"]] = team
        warnings = [(int(w["team_id"]), w["type"], json.loads(w["details"])) for w in self.rows["warnings"]]
        return Outcome(mapping=mapping, persons=persons, groups=groups, group_types=group_types,
                       warnings=warnings, event_person=event_person, event_groups=event_groups,
                       _team_of_uuid=team_of)

    def merge_order(self) -> list[str]:
        """The uuids of the merges in the order their lanes decided them (first request of each)."""
        order: list[str] = []
        for part in self.parts:
            for message in part.logs[INBOX]:
                if message.get("k") == "merge" and message["uuid"] not in order:
                    order.append(message["uuid"])
        return order


def _latest_rows(rows: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """ReplacingMergeTree(version): per key the row with the highest version; equal versions must agree."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        k = tuple(r[c] for c in key)
        old = out.get(k)
        if old is None or r["version"] > old["version"]:
            out[k] = r
        elif r["version"] == old["version"]:
            assert _same_row(r, old), f"two different rows for {k} at version {r['version']}: {old} / {r}"
    return out


def _same_row(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "created_at"} == {k: v for k, v in b.items() if k != "created_at"}


def _latest(rows: list[dict[str, Any]], key: tuple[str, str], column: str) -> dict[tuple[Any, ...], Any]:
    return {k: r[column] for k, r in _latest_rows(rows, key).items() if not r.get("is_deleted")}


def raw_event(e: Event) -> RawEvent:
    raw = e.to_raw(f"phc_{e.team_id}")
    raw.team_id = e.team_id
    return raw
