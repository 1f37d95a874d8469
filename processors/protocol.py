"""Identity partitioned by distinct id: the pure steps of the protocol in docs/identity.md.

Every message a processor handles is one of these, and each is handled by exactly one partition:

* a raw event (``events_raw``, key ``team:distinct_id``) at its distinct id's partition;
* an inbox message (``identity_inbox``, co-partitioned with ``events_raw``), keyed by what it is about:
  a distinct id or person home (``team:id``), the team's merge lane (:func:`lane_key`) or a group
  (:func:`group_key`).

A step reads the state through a :class:`Tx` and returns a :class:`Step`: the state writes, the rows for
ClickHouse and the inbox messages to send. The runtime (processors/app.py) applies the writes to its
partition's changelog, then sends everything, and only then lets the input offset be committed. Steps
are deterministic in (state, message), so a replay after a crash recomputes the same step or - when
the state already holds part of it - one that converges (docs/identity.md, "Crash safety").

State keys (all written only by the partition that reads them):

* ``i:team:id`` — a distinct id's record: ``ptr`` [person id, home id, version] when the merge lane
  re-pointed the id (absent: the id's own person ``new_person_id(team, id)``, home = the id), ``q``
  events parked while the id waits for the lane (with their raw offsets), ``o`` the raw offset of the
  first event of the id itself processed with its person (its later personless events use that person),
  and ``p`` the person homed at this id, if any
  (``{"id", "created_at", "regs", "identified", "version"}``, or a forward ``{"fwd": [id, home], ...}``
  once that person was merged into another);
* ``t:team:partition`` — the team's group types as this partition learned them from the lane;
* ``g:team:index:key`` — a group's registers;
* ``L:team:...`` — the merge lane's state (``d:id`` pointers, ``p:home`` person summaries, ``types``) and
  its write-ahead records ``w:uuid`` (a lane step writes several keys; the record makes it all-or-nothing
  on replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ujson

from eventpipe.contract import RawEvent, override_row, warning_row
from processors import registers
from processors.identity import (
    MAX_GROUP_KEY,
    MAX_GROUP_TYPES,
    distinct_id_row,
    is_illegal_id,
    new_person_id,
    personless_id,
)
from processors.transform import MERGE_EVENTS, event_properties, js_string, person_ops, process_event

MAX_HOPS = 16  # forwards of one event from merged-away person to merged-away person
NO_GROUPS = ("", "", "", "", "")


def id_key(team: int, distinct_id: str) -> bytes:
    """Kafka key of a distinct id (and of a person's home): the gateway's key for the raw event."""
    return f"{team}:{distinct_id}".encode()


def lane_key(team: int) -> bytes:
    """Kafka key of a team's merge lane (no distinct id key can look like it: no ``:``)."""
    return b"%d\x00lane" % team


def group_key(team: int, index: int, key: str) -> bytes:
    return f"{team}\x00g:{index}:{key}".encode()


@dataclass
class Step:
    """What one message turns into."""

    writes: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sends: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    wal: str | None = None  # lane steps: key of the write-ahead record, written before ``writes``
    n: int = 0  # lane steps: the lane's step counter once this step's writes are all applied
    # Merge lane steps: the decision (joined, merged, same, refused) when it was just made; not part of the
    # write-ahead record, so a recorded decision sent again (Step.from_json) has none. For metrics only.
    outcome: str | None = None

    def row(self, kind: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(row)

    def send(self, key: bytes, message: dict[str, Any]) -> None:
        self.sends.append((key, message))

    def to_json(self) -> dict[str, Any]:
        return {"writes": self.writes, "rows": self.rows, "sends": [[k.decode(), m] for k, m in self.sends],
                "n": self.n}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Step:
        return cls(writes=obj["writes"], rows=obj["rows"], sends=[(k.encode(), m) for k, m in obj["sends"]],
                   n=obj["n"])


class Tx:
    """Reads through to the state; writes stay in the step until the runtime applies them.

    ``clock`` (microseconds, the runtime's wall clock) versions person and group rows: a version is
    ``max(previous + 1, clock)``. A crash can roll a partition's state back to before rows it already
    emitted, and the replay may then reach the same content with fewer changes; a version that also
    follows the clock still makes the last row emitted the highest, so ClickHouse keeps it (assuming
    the clocks of two workers differ by less than a worker takes to be replaced, ~10 s).
    """

    def __init__(self, state: Any, step: Step, clock: int = 0) -> None:
        self.state, self.step, self.clock = state, step, clock
        # What each key held when first read, JSON-encoded: a snapshot the protocol's own changes to the
        # value it got cannot alter (it copies records, but nested values may be shared).
        self.read: dict[str, str] = {}

    def next_version(self, previous: int) -> int:
        return max(previous + 1, self.clock)

    def get(self, key: str) -> Any:
        if key in self.step.writes:
            return self.step.writes[key]
        value = self.state.get(key)
        self.read.setdefault(key, _snapshot(value))
        return value

    def put(self, key: str, value: Any) -> None:
        """Stage a write, unless it would store exactly what the key holds: most events leave their id's
        record as it was, and a write costs the runtime a changelog record and a store put (state after
        the step is the same either way, so skipping it is invisible to the protocol)."""
        if key not in self.step.writes and self.read.get(key) == _snapshot(value):
            return
        self.step.writes[key] = value


def _snapshot(value: Any) -> str:
    return ujson.dumps(value, ensure_ascii=False)


# -- raw events and their distinct id's partition ------------------------------------------------------


def raw_dict(raw: RawEvent) -> dict[str, Any]:
    return {
        "uuid": raw.uuid,
        "distinct_id": raw.distinct_id,
        "token": raw.token,
        "event": raw.event,
        "timestamp": raw.timestamp,
        "now": raw.now,
        "data": raw.data,
        "sent_at": raw.sent_at,
        "ip": raw.ip,
        "site_url": raw.site_url,
        "warnings": raw.warnings,
        "team_id": raw.team_id,
    }


def person_of(team: int, distinct_id: str, record: dict[str, Any]) -> str:
    """The person an id record (``i:team:id``) points at: the lane's pointer, else the id's own person."""
    ptr = record.get("ptr")
    return str(ptr[0]) if ptr else new_person_id(team, distinct_id)


def _rec(tx: Tx, team: int, distinct_id: str) -> dict[str, Any]:
    return dict(tx.get(f"i:{team}:{distinct_id}") or {})


def _put_rec(tx: Tx, team: int, distinct_id: str, rec: dict[str, Any]) -> None:
    tx.put(f"i:{team}:{distinct_id}", {k: v for k, v in rec.items() if v not in (None, [])})


def _queued(raw: RawEvent, offset: int | None) -> dict[str, Any]:
    """A raw event as an id's queue keeps it, with its offset in the raw partition when known."""
    entry = raw_dict(raw)
    if offset is not None:
        entry["offset"] = offset
    return entry


def _unqueued(entry: dict[str, Any]) -> tuple[RawEvent, int | None]:
    fields = dict(entry)
    offset = fields.pop("offset", None)
    return RawEvent(**fields), offset


def on_raw(state: Any, partition: int, raw: RawEvent, clock: int = 0, offset: int | None = None) -> Step:
    """A raw event at its distinct id's partition; ``offset`` is its offset there (None: unknown)."""
    step = Step()
    tx = Tx(state, step, clock)
    team, d = int(raw.team_id or 0), raw.distinct_id
    rec = _rec(tx, team, d)
    if rec.get("q"):  # the id waits for the lane: keep its order
        rec["q"] = [*rec["q"], _queued(raw, offset)]
        _put_rec(tx, team, d, rec)
        return step
    _drain(tx, partition, team, d, rec, [_queued(raw, offset)])
    return step


def _drain(tx: Tx, partition: int, team: int, d: str, rec: dict[str, Any], queue: list[dict[str, Any]]) -> None:
    """Process the id's events in order until one has to wait for the lane (it then heads the queue)."""
    while queue:
        raw, offset = _unqueued(queue[0])
        if _process(tx, partition, team, d, rec, raw, offset):
            queue = queue[1:]
            rec = _rec(tx, team, d)  # processing may have rewritten the record (the id's own person)
            continue
        break
    rec["q"] = queue
    _put_rec(tx, team, d, rec)


def _props(raw: RawEvent) -> dict[str, Any]:
    props = raw.data.get("properties")
    return props if isinstance(props, dict) else {}


def _group_identify(raw: RawEvent) -> tuple[str, str] | None:
    """(type, key) of a ``$groupidentify`` PostHog acts on."""
    props = _props(raw)
    if raw.event == "$groupidentify" and isinstance(props.get("$group_type"), str) and "$group_key" in props:
        return props["$group_type"], str(props["$group_key"])
    return None


def _declared(raw: RawEvent) -> dict[Any, Any]:
    declared = raw.data.get("$groups") or _props(raw).get("$groups")
    return declared if isinstance(declared, dict) else {}


def _type_uses(raw: RawEvent) -> list[str]:
    """Every use of a group type by the event, in PostHog's order: its ``$groupidentify``, then ``$groups``."""
    uses: list[str] = []
    identify = _group_identify(raw)
    if identify is not None and len(identify[1]) <= MAX_GROUP_KEY:
        uses.append(identify[0])
    uses += [str(t) for t in _declared(raw)]
    return uses


def _types(tx: Tx, team: int, partition: int) -> dict[str, int]:
    return dict(tx.get(f"t:{team}:{partition}") or {})


def _merge_source(raw: RawEvent) -> tuple[str, bool] | None:
    """(source id, dangerous) when the event asks for a merge, by PostHog's triggers."""
    props = _props(raw)
    if raw.event == "$identify" and props.get("$anon_distinct_id") is not None:
        source = js_string(props["$anon_distinct_id"])
        return (source, False) if source != raw.distinct_id else None
    if raw.event in MERGE_EVENTS and props.get("alias") is not None:
        source = js_string(props["alias"])
        return (source, raw.event == "$merge_dangerously") if source != raw.distinct_id else None
    return None


def _warn(tx: Tx, team: int, type_: str, details: dict[str, Any], now: str) -> None:
    tx.step.row("warnings", warning_row(team, type_, "processors", details, now))


def _process(
    tx: Tx,
    partition: int,
    team: int,
    d: str,
    rec: dict[str, Any],
    raw: RawEvent,
    offset: int | None = None,
    resolved: dict[str, Any] | None = None,
) -> bool:
    """One event of ``d`` at d's partition; False when it must wait for the lane (a request was sent).

    ``offset`` is the event's offset in the raw partition (None: unknown); ``resolved`` is the lane's answer
    for this event, when it is the one the id waited for.
    """
    resolved = resolved or {}
    props = _props(raw)
    # Group columns are resolved here, where the event arrives, so a forwarded event needs no types.
    uses = _type_uses(raw)
    known = _types(tx, team, partition)
    missing = list(dict.fromkeys(t for t in uses if t not in known))
    if missing and len(known) < MAX_GROUP_TYPES and not resolved.get("typed"):
        rec["q"] = [_queued(raw, offset)]
        tx.step.send(lane_key(team), {"k": "types", "team": team, "d": d, "uuid": raw.uuid, "want": missing,
                                      "now": raw.now})
        return False
    for group_type in uses:
        if group_type not in known:
            _warn(tx, team, "group_type_limit_reached", {"group_type": group_type, "max": MAX_GROUP_TYPES}, raw.now)
    keep = True
    identify_group = _group_identify(raw)
    if identify_group is not None:
        group_type, key = identify_group
        if len(key) > MAX_GROUP_KEY:  # PostHog drops the event (its person updates still apply)
            _warn(tx, team, "group_key_too_long", {"group_type": group_type, "length": len(key)}, raw.now)
            keep = False
        elif group_type in known:
            group_set = props.get("$group_set") if isinstance(props.get("$group_set"), dict) else {}
            tx.step.send(
                group_key(team, known[group_type], key),
                {"k": "group", "team": team, "index": known[group_type], "key": key, "set": group_set,
                 "stamp": [raw.timestamp, raw.uuid]},
            )
    groups = ["", "", "", "", ""]
    for group_type, key in _declared(raw).items():
        index = known.get(str(group_type))
        if index is not None and key is not None:
            groups[index] = str(key)

    if props.get("$process_person_profile") is False:
        if keep:  # PostHog takes the id's person when it has one (its properties stay off the event)
            person = person_of(team, d, rec) if _had_person(rec, offset) else personless_id(team, d)
            _emit(tx, process_event(raw, team, person_id=person, groups=tuple(groups)))
        return True

    identify = bool(resolved.get("identify"))
    if not resolved.get("merged"):
        merge = _merge_source(raw)
        if merge is not None:
            source, dangerous = merge
            if is_illegal_id(d) or is_illegal_id(source):
                _warn(tx, team, "cannot_merge_with_illegal_distinct_id", {"target": d, "source": source}, raw.now)
            else:
                rec["q"] = [_queued(raw, offset)]
                has_person = bool(rec.get("ptr") or rec.get("p"))
                tx.step.send(
                    lane_key(team),
                    {"k": "merge", "team": team, "target": d, "source": source, "dangerous": dangerous,
                     "target_has_person": has_person, "uuid": raw.uuid, "now": raw.now},
                )
                return False

    if "o" not in rec:
        # The id has a person from now on, by its own events alone: whether it already had one when the lane
        # re-pointed it as another id's merge source, or when another id's event created the person homed
        # here, depends on the schedule, so the personless events above do not go by ``ptr`` or ``p``.
        rec["o"] = -1 if offset is None else offset
        _put_rec(tx, team, d, rec)
    _pid, home, _v = rec.get("ptr") or [new_person_id(team, d), d, 0]
    message = {"k": "event", "team": team, "home": home, "raw": raw_dict(raw), "groups": groups,
               "identify": identify, "hops": 0, "keep": keep}
    if home == d:
        _at_home(tx, message)
    else:
        tx.step.send(id_key(team, home), message)
    return True


def _had_person(rec: dict[str, Any], offset: int | None) -> bool:
    """Whether an event of the id itself, before the one at ``offset``, was processed with its person.

    ``o`` holds the raw offset of the first such event. After a crash the state may already hold it while
    an earlier personless event is read again; comparing offsets gives that event the answer it got the
    first time (-1 or no offset: order unknown, the flag alone decides)."""
    first = rec.get("o")
    return first is not None and (offset is None or first < offset)


def _emit(tx: Tx, output: Any) -> None:
    for row in output.events:
        tx.step.row("events", row)
    for row in output.warnings:
        tx.step.row("warnings", row)


def _at_home(tx: Tx, message: dict[str, Any]) -> None:
    """An event of a person, at the partition of the person's home id: apply it, emit its rows."""
    team, home, raw = message["team"], message["home"], RawEvent(**message["raw"])
    rec = _rec(tx, team, home)
    person = rec.get("p")
    if person is not None and "fwd" in person:
        if message["hops"] >= MAX_HOPS:
            tx.step.row("dead", {"reason": "person forward chain too long", "raw": message})
            return
        _pid, to = person["fwd"]
        tx.step.send(id_key(team, to), {**message, "home": to, "hops": message["hops"] + 1})
        return
    new = person is None
    if new:
        person = {"id": new_person_id(team, home), "created_at": raw.timestamp, "regs": {}, "identified": False,
                  "version": -1}
        if not rec.get("ptr"):
            tx.step.row("distinct_ids", distinct_id_row(team, home, person["id"], 0))
    normalised = event_properties(raw)  # once for both the person and the row
    set_, set_once, unset = person_ops(raw, normalised)
    regs, changed = registers.apply_updates(person["regs"], (raw.timestamp, raw.uuid), set_, set_once, unset)
    identified = person["identified"] or bool(message["identify"])
    created_at = min(person["created_at"], raw.timestamp)
    if new or changed or identified != person["identified"] or created_at != person["created_at"]:
        person = {**person, "regs": regs, "identified": identified, "created_at": created_at,
                  "version": tx.next_version(person["version"])}
        rec["p"] = person
        _put_rec(tx, team, home, rec)
        tx.step.row("persons", person_row(team, person))
    if not message.get("keep", True):
        return
    properties = registers.materialize(person["regs"])
    output = process_event(raw, team, person_id=person["id"], person_properties=properties,
                           groups=tuple(message["groups"]), normalised=normalised)
    _emit(tx, output)


def person_row(team: int, person: dict[str, Any], deleted: bool = False) -> dict[str, Any]:
    return {
        "id": person["id"],
        "created_at": person["created_at"],
        "team_id": team,
        "properties": _dumps(registers.materialize(person["regs"])),
        "is_identified": int(person["identified"]),
        "is_deleted": int(deleted),
        "version": person["version"],
    }


# -- inbox messages -----------------------------------------------------------------------------------


def on_inbox(state: Any, partition: int, message: dict[str, Any], clock: int = 0) -> Step:
    """One message of the identity inbox, at the partition its key names."""
    kind = message.get("k")
    if kind in ("merge", "types"):
        return _lane_step(state, message, clock)
    step = Step()
    tx = Tx(state, step, clock)
    handler = _HANDLERS.get(str(kind))
    if handler is None:
        step.row("dead", {"reason": f"unknown identity message kind {kind!r}", "raw": message})
        return step
    handler(tx, partition, message)
    return step


def _lane_step(state: Any, message: dict[str, Any], clock: int) -> Step:
    """A lane decision, all-or-nothing: a write-ahead record first, then its writes, then the lane's step
    counter. A request seen again (a replay, or the same event asking twice) gets the recorded decision
    once more; its writes are applied again only if the counter says they never completed - applying
    them after a later step would roll that step back."""
    team, kind = message["team"], message["k"]
    wal_key, count_key = f"L:{team}:w:{kind}:{message['uuid']}", f"L:{team}:n"
    count = int(state.get(count_key) or 0)
    done = state.get(wal_key)
    if done is not None:
        step = Step.from_json(done)
        if count >= done["n"]:
            step.writes = {}
        return step
    step = Step(wal=wal_key)
    (_lane_merge if kind == "merge" else _lane_types)(Tx(state, step, clock), message)
    step.writes[count_key] = count + 1
    step.n = count + 1
    return step


def _on_event(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    _at_home(tx, message)


def _resume(tx: Tx, partition: int, message: dict[str, Any], resolved: dict[str, Any]) -> None:
    """The lane answered for the event heading the id's queue: process it, then what waited behind it."""
    team, d = message["team"], message["d"]
    rec = _rec(tx, team, d)
    queue = rec.get("q") or []
    if not queue or queue[0]["uuid"] != message["uuid"]:
        return  # an answer for an event already processed (a replay)
    head, offset = _unqueued(queue[0])
    rec["q"] = []
    if not _process(tx, partition, team, d, rec, head, offset, resolved):
        rec = _rec(tx, team, d) | {"q": rec["q"]}
        rec["q"] = rec["q"] + queue[1:]
        _put_rec(tx, team, d, rec)
        return
    _drain(tx, partition, team, d, _rec(tx, team, d), queue[1:])


def _newer(rec: dict[str, Any], ptr: list[Any] | None) -> bool:
    return ptr is not None and (not rec.get("ptr") or ptr[2] > rec["ptr"][2])


def _on_merged(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    team, d = message["team"], message["d"]
    rec = _rec(tx, team, d)
    if _newer(rec, message.get("ptr")):
        rec["ptr"] = message["ptr"]
        _put_rec(tx, team, d, rec)
    _resume(tx, partition, message, {"merged": True, "identify": message["identify"]})


def _on_typed(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    team = message["team"]
    types = _types(tx, team, partition)
    if any(types.get(t) != i for t, i in message["types"].items()):
        tx.put(f"t:{team}:{partition}", {**types, **message["types"]})
    _resume(tx, partition, message, {"typed": True})


def _on_repoint(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    team, d = message["team"], message["d"]
    rec = _rec(tx, team, d)
    if _newer(rec, message["ptr"]):
        rec["ptr"] = message["ptr"]
        _put_rec(tx, team, d, rec)


def _on_merge_out(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    """The person homed here was merged into ``into``: leave a forward, send its registers over."""
    team, home, into = message["team"], message["home"], message["into"]
    rec = _rec(tx, team, home)
    person = rec.get("p")
    if person is None:  # never seen here: nothing to move, but later events must follow the forward
        rec["p"] = {"fwd": into, "regs": {}, "created_at": None, "identified": False}
        _put_rec(tx, team, home, rec)
        # A crash may have rolled back a person this home created and already wrote to ClickHouse: its
        # deletion, versioned by the clock, outranks any row of it (and is harmless if there was none).
        ghost = {"id": new_person_id(team, home), "created_at": message["now"], "regs": {}, "identified": False,
                 "version": tx.next_version(-1)}
        tx.step.row("persons", person_row(team, ghost, deleted=True))
        return
    if "fwd" not in person:
        version = tx.next_version(person["version"])
        tx.step.row("persons", person_row(team, {**person, "version": version}, deleted=True))
        rec["p"] = {"fwd": into, "id": person["id"], "regs": person["regs"], "created_at": person["created_at"],
                    "identified": person["identified"], "version": version}
        _put_rec(tx, team, home, rec)
        person = rec["p"]
    if person.get("created_at") is not None:  # also re-sent on a replay: joining twice changes nothing
        tx.step.send(id_key(team, into[1]), {"k": "merge_in", "team": team, "home": into[1], "regs": person["regs"],
                                             "created_at": person["created_at"], "identified": person["identified"],
                                             "hops": 0})


def _on_merge_in(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    team, home = message["team"], message["home"]
    rec = _rec(tx, team, home)
    person = rec.get("p")
    if person is not None and "fwd" in person:
        if message["hops"] < MAX_HOPS:
            to = person["fwd"][1]
            tx.step.send(id_key(team, to), {**message, "home": to, "hops": message["hops"] + 1})
        return
    if person is None:
        person = {"id": new_person_id(team, home), "created_at": message["created_at"], "regs": {},
                  "identified": False, "version": -1}
        if not rec.get("ptr"):
            tx.step.row("distinct_ids", distinct_id_row(team, home, person["id"], 0))
    joined = registers.join(person["regs"], message["regs"])
    updated = {**person, "regs": joined, "identified": person["identified"] or message["identified"],
               "created_at": min(person["created_at"], message["created_at"])}
    if updated != person:
        updated["version"] = tx.next_version(person["version"])
        rec["p"] = updated
        _put_rec(tx, team, home, rec)
        tx.step.row("persons", person_row(team, updated))


def _on_group(tx: Tx, partition: int, message: dict[str, Any]) -> None:
    team, index, key = message["team"], message["index"], message["key"]
    gkey = f"g:{team}:{index}:{key}"
    group = tx.get(gkey)
    stamp = (message["stamp"][0], message["stamp"][1])
    if group is None:
        group = {"created_at": stamp[0], "regs": {}, "version": -1}
    regs, changed = registers.set_only(group["regs"], stamp, message["set"])
    created_at = min(group["created_at"], stamp[0])
    if changed or group["version"] < 0 or created_at != group["created_at"]:
        group = {"created_at": created_at, "regs": regs, "version": tx.next_version(group["version"])}
        tx.put(gkey, group)
        tx.step.row(
            "groups",
            {"group_type_index": index, "group_key": key, "created_at": created_at, "team_id": team,
             "group_properties": _dumps(registers.materialize(regs)), "version": group["version"]},
        )


def _dumps(obj: Any) -> str:
    import ujson

    return ujson.dumps(obj, ensure_ascii=False)


_HANDLERS = {
    "event": _on_event,
    "merged": _on_merged,
    "typed": _on_typed,
    "repoint": _on_repoint,
    "merge_out": _on_merge_out,
    "merge_in": _on_merge_in,
    "group": _on_group,
}


# -- the merge lane: one per team, on one partition; every merge of the team is decided here in order --


def _lane_ptr(tx: Tx, team: int, d: str) -> tuple[list[Any], bool]:
    ptr = tx.get(f"L:{team}:d:{d}")
    return (list(ptr), True) if ptr else ([new_person_id(team, d), d, 0], False)


def _lane_person(tx: Tx, team: int, home: str) -> dict[str, Any]:
    return dict(tx.get(f"L:{team}:p:{home}") or {"identified": False, "ids": [home]})


def _lane_merge(tx: Tx, message: dict[str, Any]) -> None:
    """Decide one merge by PostHog's rules; re-point ids, move a person, answer the waiting id."""
    team, target, source = message["team"], message["target"], message["source"]
    now = message["now"]
    target_ptr, target_known = _lane_ptr(tx, team, target)
    source_ptr, _ = _lane_ptr(tx, team, source)
    # The lane knows of persons its own joins created (a target that joined an id without events, then
    # that id's own identify): such an id has a person even though its partition has seen no event.
    target_has = bool(message["target_has_person"]) or target_known or tx.get(f"L:{team}:p:{target}") is not None
    reply: dict[str, Any] = {"k": "merged", "team": team, "d": target, "uuid": message["uuid"], "ptr": None,
                             "identify": False}

    if not target_has:
        # The target has no person yet: it joins the source's (which may not exist yet; it will be created
        # at its home by this very event), as PostHog joins an id without a person to the other's person.
        person = _lane_person(tx, team, source_ptr[1])
        version = (target_ptr[2] if target_known else 0) + 1
        ptr = [source_ptr[0], source_ptr[1], version]
        tx.put(f"L:{team}:d:{target}", ptr)
        tx.put(f"L:{team}:p:{source_ptr[1]}", {"identified": True, "ids": sorted({*person["ids"], target})})
        tx.step.row("distinct_ids", distinct_id_row(team, target, ptr[0], version))
        reply.update(ptr=ptr, identify=True)
        tx.step.outcome = "joined"
    elif target_ptr[0] == source_ptr[0]:
        tx.step.outcome = "same"  # already one person
    elif _lane_person(tx, team, source_ptr[1])["identified"] and not message["dangerous"]:
        tx.step.outcome = "refused"
        tx.step.row(
            "warnings",
            warning_row(team, "cannot_merge_already_identified", "processors",
                        {"target": target, "source": source, "source_person_id": source_ptr[0]}, now),
        )
    else:
        into = _lane_person(tx, team, target_ptr[1])
        moved = _lane_person(tx, team, source_ptr[1])
        for d in moved["ids"]:
            old, known = _lane_ptr(tx, team, d)
            ptr = [target_ptr[0], target_ptr[1], (old[2] if known else 0) + 1]
            tx.put(f"L:{team}:d:{d}", ptr)
            tx.step.row("distinct_ids", distinct_id_row(team, d, ptr[0], ptr[2]))
            tx.step.row("overrides", override_row(team, d, ptr[0], ptr[2]))
            tx.step.send(id_key(team, d), {"k": "repoint", "team": team, "d": d, "ptr": ptr})
        tx.put(f"L:{team}:p:{target_ptr[1]}", {"identified": True, "ids": sorted({*into["ids"], *moved["ids"]})})
        tx.put(f"L:{team}:p:{source_ptr[1]}", {"identified": False, "ids": [], "gone": True})
        tx.step.send(id_key(team, source_ptr[1]),
                     {"k": "merge_out", "team": team, "home": source_ptr[1], "into": [target_ptr[0], target_ptr[1]],
                      "now": now})
        reply["identify"] = True
        tx.step.outcome = "merged"
    tx.step.send(id_key(team, target), reply)


def _lane_types(tx: Tx, message: dict[str, Any]) -> None:
    """Group type indexes of a team, first come first served (five at most; the asking partition warns
    about the uses of types beyond that)."""
    team = message["team"]
    key = f"L:{team}:types"
    types: dict[str, int] = dict(tx.get(key) or {})
    added = False
    for group_type in message["want"]:
        if group_type not in types and len(types) < MAX_GROUP_TYPES:
            types[group_type] = len(types)
            added = True
    if added:
        tx.put(key, types)
    tx.step.send(id_key(team, message["d"]),
                 {"k": "typed", "team": team, "d": message["d"], "uuid": message["uuid"], "types": types})


__all__ = ["Step", "Tx", "group_key", "id_key", "lane_key", "on_inbox", "on_raw"]
