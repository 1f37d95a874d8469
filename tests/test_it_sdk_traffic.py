"""Real SDK traffic (tests/fixtures/sdk_traffic/), replayed byte for byte through the whole pipeline.

Every recorded request is sent as it was (method, path, query, headers, body) in recorded order to a
team that keeps the recorded PostHog key; each must get PostHog's answer (200). Then every stored row is
checked field by field against what PostHog's ingestion makes of the request. The expected values come
from this module's own reading of the bytes (stdlib gzip / base64 / form parsing, the ``lzstring``
package for lz64) and PostHog's documented rules, never from eventpipe's code or output:

* timestamp (plugin-server ``parseEventTimestamp``): ``now + (timestamp - sent_at)`` when both are
  known, the timestamp alone, ``now - offset``, else ``now``; ``now`` is the gateway's receive time,
  stored as the row's ``created_at``, so the rule is checked exactly, to the microsecond. ``sent_at`` is
  the batch's, the event's, or the query's ``_`` (epoch ms).
* properties (``normalizeEvent`` in plugin-server/src/utils/event.ts, ``getElementsChain`` in
  create-event.ts, ``personInitialAndUTMProperties`` in utils/db/utils.ts): the properties sent, with
  the top-level ``$set`` / ``$set_once`` merged over theirs, the person properties PostHog copies
  (``$set``) and their ``$initial_*`` first-touch twins (``$set_once``, nulls left out), ``$ip``,
  ``$sent_at`` (RFC 3339 as the Rust capture writes it), ``$elements`` / ``$elements_chain`` moved to
  the ``elements_chain`` column, and the person operations dropped from personless events.
* persons: ``$identify`` with ``$anon_distinct_id`` and ``$create_alias`` with ``alias`` put both ids
  on one person; its properties are the ``$set`` / ``$set_once`` of its ids' events applied in time order.
* groups: ``$groupidentify`` upserts the group; ``$groups`` fills ``$group_<index>``.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lzstring
import pytest

from tests.stack import Stack, poll

FIXTURES = Path(__file__).parent / "fixtures" / "sdk_traffic"
API_KEY = "phc_eventpipeSdkTrafficFixtureKey0123456789ABCD"
# Replay order: the sessions one after the other, each in the order its requests were recorded.
SESSIONS = (
    "posthog-js-1.78.6.json",
    "posthog-js-1.78.6-retry.json",
    "posthog-js-1.449.2.json",
    "posthog-python-7.91.1.json",
    "posthog-python-7.91.1-gzip.json",
    "posthog-node-5.70.0.json",
    "mixpanel-python-5.4.1.json",
    "mixpanel-node-0.24.0.json",
)
CLIENT_IP = "127.0.0.1"  # the replay's TCP peer, what PostHog stores as $ip

# EVENT_TO_PERSON_PROPERTIES + CAMPAIGN_PROPERTIES (plugin-server/src/worker/ingestion/persons/
# person-property-utils.ts): copied onto the person as $set and, as $initial_*, $set_once.
PERSON_KEYS = frozenset(
    "$app_build $app_name $app_namespace $app_version $browser $browser_version $device_type $current_url "
    "$pathname $os $os_name $os_version $referring_domain $referrer $screen_height $screen_width "
    "$viewport_height $viewport_width $raw_user_agent utm_source utm_medium utm_campaign utm_content "
    "utm_name utm_term gclid gad_source gclsrc dclid gbraid wbraid fbclid msclkid twclid li_fat_id mc_cid "
    "igshid ttclid rdt_cid irclid _kx epik qclid sccid".split()
)
PERSON_EVENTS = frozenset({"$identify", "$create_alias", "$merge_dangerously", "$set"})


# --- reading a recorded request, independently of the gateway -------------------------------------


@dataclass
class Recorded:
    session: str
    index: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def name(self) -> str:
        return f"{self.session}#{self.index}"


@dataclass
class Expected:
    """One event as PostHog would store it. Its time is either ``after_receipt`` (added to the gateway's
    receive time, the row's created_at) or ``as_sent``."""

    request: Recorded
    event: str
    distinct_id: str
    uuid: str | None
    properties: dict[str, Any]
    elements_chain: str
    after_receipt: timedelta | None
    as_sent: datetime | None
    groups: dict[str, str] = field(default_factory=dict)
    person_set: dict[str, Any] = field(default_factory=dict)
    person_set_once: dict[str, Any] = field(default_factory=dict)
    merge_with: str | None = None

    @property
    def personless(self) -> bool:
        return self.properties.get("$process_person_profile") is False


def load_requests() -> list[Recorded]:
    out = []
    for session in SESSIONS:
        for i, r in enumerate(json.loads((FIXTURES / session).read_text())):
            out.append(
                Recorded(session, i, r["method"], r["path"], r["query"], r["headers"], base64.b64decode(r["body_b64"]))
            )
    return out


def _data_text(text: str, compression: str) -> Any:
    """A form / query ``data`` value: JSON, lz64 or base64 (posthog-js 1.78's form bodies)."""
    if text.lstrip()[:1] in ("{", "["):
        return json.loads(text)
    if compression in ("lz64", "lz-string"):
        return json.loads(lzstring.LZString().decompressFromBase64(text))
    return json.loads(base64.b64decode(text + "=" * (-len(text) % 4)))


def decode_payload(req: Recorded) -> Any:
    query = urllib.parse.parse_qs(req.query)
    compression = (query.get("compression") or [""])[0]
    body = req.body
    if req.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    if req.method == "GET":
        return _data_text(query["data"][0], compression)
    if body.startswith(b"data="):
        form = urllib.parse.parse_qs(body.decode())
        return _data_text(form["data"][0], (form.get("compression") or [compression])[0])
    return json.loads(body)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _rfc3339(dt: datetime) -> str:
    """PostHog's Rust capture writes ``$sent_at`` this way: UTC, ``Z``, the fraction without trailing zeros."""
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += "." + f"{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


def _chain_element(el: dict[str, Any]) -> str:
    """PostHog's ``elementsToString`` for one posthog-js element (ASCII attribute keys sort by code point)."""
    tag = el.get("tag_name", "")
    classes = sorted(c.replace('"', "") for c in el.get("classes") or [])
    attrs: dict[str, Any] = {}
    if el.get("$el_text"):
        attrs["text"] = el["$el_text"][:400]
    if el.get("attr__href"):
        attrs["href"] = el["attr__href"][:2048]
    attrs["nth-child"] = el.get("nth_child") or 0
    attrs["nth-of-type"] = el.get("nth_of_type") or 0
    if el.get("attr__id"):
        attrs["attr_id"] = el["attr__id"]
    attrs.update({k: v for k, v in el.items() if k.startswith("attr__")})

    def esc(v: Any) -> str:
        return str(v).replace('"', '\\"')

    head = tag + "".join(f".{c}" for c in classes)
    return head + ":" + "".join(f'{esc(k)}="{esc(attrs[k])}"' for k in sorted(attrs))


def elements_chain(elements: list[dict[str, Any]]) -> str:
    return ";".join(_chain_element(el) for el in elements)


def _merged(top: Any, inner: Any) -> Any:
    if isinstance(top, dict) and isinstance(inner, dict):
        return {**inner, **top}
    return top


def expected_events(req: Recorded) -> list[Expected]:
    payload = decode_payload(req)
    query = urllib.parse.parse_qs(req.query)
    top: dict[str, Any] = {}
    if isinstance(payload, dict) and "batch" in payload:
        top, events = payload, payload["batch"]
    elif isinstance(payload, list):
        events = payload
    else:
        events = [payload]
    query_sent_at = _parse_time(int(query["_"][0]) / 1000) if "_" in query else None
    out = []
    for ev in events:
        if req.path.strip("/") == "engage" and "event" not in ev:
            # A Mixpanel people update: PostHog's capture names /engage payloads $identify
            # (posthog/api/capture.py: "JS identify call").
            ev = {"event": "$identify", "distinct_id": ev["$distinct_id"], **ev}
        out.append(_expected(req, ev, top, query_sent_at))
    return out


def _expected(req: Recorded, ev: dict[str, Any], top: dict[str, Any], query_sent_at: datetime | None) -> Expected:
    props = dict(ev.get("properties") or {})
    distinct_id = ev.get("distinct_id") or ev.get("$distinct_id") or props.get("distinct_id")
    event = ev["event"]
    sent_at_raw = top.get("sent_at") or ev.get("sent_at")
    sent_at = _parse_time(sent_at_raw) if sent_at_raw else query_sent_at

    after_receipt: timedelta | None = None
    as_sent: datetime | None = None
    if ev.get("timestamp") is not None and sent_at is not None:
        after_receipt = _parse_time(ev["timestamp"]) - sent_at
    elif ev.get("timestamp") is not None:
        as_sent = _parse_time(ev["timestamp"])
    elif ev.get("offset") is not None:
        after_receipt = -timedelta(milliseconds=ev["offset"])
    elif req.path.strip("/") == "track" and props.get("time") is not None:
        # Not PostHog's rule (its capture ignores Mixpanel's time, the event is stored at its receive time):
        # eventpipe reads a /track event's own time, as Mixpanel does (docs/timestamps.md). A people
        # update's ``$time`` is read by neither.
        as_sent = _parse_time(props["time"])
    else:
        after_receipt = timedelta(0)

    # The person operations the client sent: top level merged over the properties' (normalizeEvent).
    for op in ("$set", "$set_once"):
        if ev.get(op) is not None:
            props[op] = _merged(ev[op], props.get(op))
    explicit_set = dict(props.get("$set") or {})
    explicit_once = dict(props.get("$set_once") or {})
    lifted = {k: v for k, v in props.items() if k in PERSON_KEYS}
    assert "$os_name" not in lifted, "no recorded SDK sends $os_name; its rule is not modelled here"
    initial = {"$initial_" + k.replace("$", "", 1): v for k, v in lifted.items() if v is not None}
    if lifted:
        props["$set"] = {**lifted, **explicit_set}
        props["$set_once"] = {**initial, **explicit_once}

    # What the person gets: copied keys are $set on person events; elsewhere PostHog writes them only to
    # a person lacking them, or beside another change (person-update.ts, shouldUpdatePersonIfOnlyChange),
    # which depends on the order updates are applied in; docs/capture.md reads that as $set_once.
    person_set = dict(explicit_set)
    person_once = {**initial, **explicit_once}
    copied = {k: v for k, v in lifted.items() if k not in explicit_set}
    if event in PERSON_EVENTS:
        person_set = {**copied, **person_set}
    else:
        person_once = {**copied, **person_once}

    if props.get("$process_person_profile") is False:
        for op in ("$set", "$set_once", "$unset"):
            props.pop(op, None)
        person_set, person_once = {}, {}
    props.setdefault("$ip", CLIENT_IP)
    if sent_at is not None:
        props["$sent_at"] = _rfc3339(sent_at)
    chain = props.pop("$elements_chain", None) or elements_chain(props.get("$elements") or [])
    props.pop("$elements", None)

    merge_with = None
    if event == "$identify" and props.get("$anon_distinct_id"):
        merge_with = props["$anon_distinct_id"]
    elif event in ("$create_alias", "$merge_dangerously") and props.get("alias"):
        merge_with = props["alias"]
    return Expected(
        request=req,
        event=event,
        distinct_id=str(distinct_id),
        uuid=ev.get("uuid"),
        properties=props,
        elements_chain=chain,
        after_receipt=after_receipt,
        as_sent=as_sent,
        groups=dict(props.get("$groups") or {}),
        person_set=person_set,
        person_set_once=person_once,
        merge_with=None if merge_with == distinct_id else merge_with,
    )


def once_each(events: Iterable[Expected]) -> list[Expected]:
    """Each event once: a retry (the SDK re-sends a batch PostHog answered 503, byte for byte) carries the
    same uuids, and the events table keeps one row per uuid (docs/capture.md, "Retries and duplicates");
    the retry's copy is the one PostHog would have stored."""
    by_uuid: dict[str, Expected] = {}
    others = []
    for e in events:
        if e.uuid is None:
            others.append(e)
        else:
            by_uuid.pop(e.uuid, None)
            by_uuid[e.uuid] = e
    return [*by_uuid.values(), *others]


# --- the replay -------------------------------------------------------------------------------------


@dataclass
class Answer:
    request: Recorded
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def replay(stack: Stack, req: Recorded) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        target = req.path + (f"?{req.query}" if req.query else "")
        conn.request(req.method, target, body=req.body if req.body else None, headers=req.headers)
        resp = conn.getresponse()
        return Answer(req, resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Replayed:
    stack: Stack
    team_id: int
    expected: list[Expected]
    answers: list[Answer]


@pytest.fixture(scope="module")
def replayed(kafka: str, clickhouse_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    stack = Stack(Path(tmp_path_factory.mktemp("sdk-traffic")))
    try:
        stack.start()
        team = stack.team("sdk traffic", api_key=API_KEY)
        assert team.api_key == API_KEY
        requests = load_requests()
        answers = [replay(stack, req) for req in requests]
        yield Replayed(stack, team.team_id, once_each(e for req in requests for e in expected_events(req)), answers)
    finally:
        stack.close()


def test_every_recorded_request_gets_posthogs_answer(replayed: Replayed) -> None:
    refused = [(a.request.name, a.status, a.body[:200]) for a in replayed.answers if a.status != 200]
    assert not refused, f"requests PostHog accepts were refused: {refused}"
    for a in replayed.answers:
        assert json.loads(a.body) == {"status": 1}, a.request.name
        # A browser reads the answer only when CORS allows it: PostHog echoes the page's origin.
        if "Origin" in a.request.headers:
            assert a.headers["Access-Control-Allow-Origin"] == a.request.headers["Origin"], a.request.name
            assert a.headers["Access-Control-Allow-Credentials"] == "true", a.request.name


def poll_until_empty(fn: Callable[[], list[str]], timeout: float) -> list[str]:
    """``fn``'s problems once it reports none, or its last report when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while (problems := fn()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return problems


def _rows(stack: Stack, team_id: int, expected: int) -> list[dict[str, Any]]:
    query = (
        "SELECT toString(uuid) AS uuid, event, distinct_id, team_id, properties, elements_chain, "
        "toString(timestamp) AS timestamp, toString(created_at) AS created_at, "
        "`$group_0` AS g0, `$group_1` AS g1, toString(person_id) AS person_id "
        f"FROM events FINAL WHERE team_id = {int(team_id)}"
    )

    def fetch() -> list[dict[str, Any]] | None:
        rows = stack.sql(query)
        return rows if len(rows) >= expected else None

    try:
        return poll(fetch, 60, 0.5, f"{expected} stored events")
    except AssertionError:
        stack.dump_logs()
        raise


def _match(rows: list[dict[str, Any]], exp: Expected) -> dict[str, Any]:
    if exp.uuid is not None:
        found = [r for r in rows if r["uuid"] == exp.uuid]
    else:
        found = [
            r
            for r in rows
            if r["event"] == exp.event
            and r["distinct_id"] == exp.distinct_id
            and json.loads(r["properties"]).get("$insert_id") == exp.properties.get("$insert_id")
            and json.loads(r["properties"]).get("$set") == exp.properties.get("$set")
        ]
    assert len(found) == 1, f"{exp.request.name} {exp.event}: {len(found)} stored rows"
    return found[0]


def test_every_event_is_stored_as_posthog_stores_it(replayed: Replayed) -> None:
    stack, team_id, expected = replayed.stack, replayed.team_id, replayed.expected
    rows = _rows(stack, team_id, len(expected))
    assert len(rows) == len(expected), "one stored row per event sent"
    assert len({r["uuid"] for r in rows}) == len(rows)
    group_index = {"company": "g0"}  # the only group type the sessions use: index 0, first come first served
    problems: list[str] = []
    for exp in expected:
        row = _match(rows, exp)
        where = f"{exp.request.name} {exp.event}"
        uuid.UUID(row["uuid"])
        stored = json.loads(row["properties"])
        checks = {
            "event": (row["event"], exp.event),
            "distinct_id": (row["distinct_id"], exp.distinct_id),
            "team_id": (int(row["team_id"]), team_id),
            "elements_chain": (row["elements_chain"], exp.elements_chain),
        }
        received = _ts(row["created_at"])
        want_time = received + exp.after_receipt if exp.after_receipt is not None else exp.as_sent
        checks["timestamp"] = (_ts(row["timestamp"]), want_time)
        for gtype, column in group_index.items():
            checks[column] = (row[column], exp.groups.get(gtype, ""))
        for name, (got, want) in checks.items():
            if got != want:
                problems.append(f"{where}: {name} stored {got!r}, PostHog {want!r}")
        for key in sorted(set(stored) | set(exp.properties)):
            if stored.get(key, "<absent>") != exp.properties.get(key, "<absent>"):
                problems.append(
                    f"{where}: properties[{key!r}] stored {stored.get(key, '<absent>')!r}, "
                    f"PostHog {exp.properties.get(key, '<absent>')!r}"
                )
    assert not problems, "\n".join(problems)
    # Nothing in real traffic is odd enough for a warning (an unparseable time, a future timestamp...).
    assert stack.sql(f"SELECT type, details FROM ingestion_warnings WHERE team_id = {int(team_id)}") == []


def test_the_elements_chain_rule_matches_posthog_js() -> None:
    """The chain this module builds from ``$elements`` is the one current posthog-js builds itself."""
    sent = [
        ev["properties"]
        for req in load_requests()
        if req.session == "posthog-js-1.449.2.json"
        for ev in _events_of(decode_payload(req))
        if ev["event"] == "$autocapture"
    ]
    assert sent, "the current posthog-js session has an autocapture click"
    for props in sent:
        assert elements_chain(props["$elements"]) == props["$elements_chain"]


def _events_of(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, dict) and "batch" in payload:
        return list(payload["batch"])
    return payload if isinstance(payload, list) else [payload]


def _expected_persons(expected: list[Expected], stored: list[dict[str, Any]]) -> list[tuple[set[str], dict[str, Any]]]:
    """Persons as PostHog makes them: merged ids grouped, properties applied in event-time order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    has_person = {e.distinct_id for e in expected if not e.personless}
    for e in expected:
        if e.merge_with and not e.personless:
            has_person |= {e.distinct_id, e.merge_with}
            parent[find(e.merge_with)] = find(e.distinct_id)
    persons: dict[str, tuple[set[str], dict[str, Any]]] = {}
    for d in has_person:
        persons.setdefault(find(d), (set(), {}))[0].add(d)
    # In the order of the events' times (each as stored, which test_every_event_… holds to PostHog's rule).
    ordered = sorted((e for e in expected if not e.personless), key=lambda e: _ts(_match(stored, e)["timestamp"]))
    for e in ordered:
        props = persons[find(e.distinct_id)][1]
        for k, v in e.person_set_once.items():
            props.setdefault(k, v)
        props.update(e.person_set)
    return list(persons.values())


def test_persons_merge_as_posthog_merges_them(replayed: Replayed) -> None:
    stack, team_id, expected = replayed.stack, replayed.team_id, replayed.expected
    stored = _rows(stack, team_id, len(expected))
    want = _expected_persons(expected, stored)
    n_ids = sum(len(ids) for ids, _ in want)

    def mapping() -> list[dict[str, Any]] | None:
        rows = stack.sql(
            "SELECT distinct_id, toString(person_id) AS person_id FROM person_distinct_id_current "
            f"WHERE team_id = {int(team_id)}"
        )
        return rows if len(rows) >= n_ids else None

    person_of = {r["distinct_id"]: r["person_id"] for r in poll(mapping, 60, 0.5, f"{n_ids} distinct ids")}
    assert set(person_of) == {d for ids, _ in want for d in ids}, "ids with a person (personless ids have none)"
    for ids, _props in want:
        assert len({person_of[d] for d in ids}) == 1, f"{sorted(ids)} are one person"
    assert len({person_of[next(iter(ids))] for ids, _ in want}) == len(want), "unmerged ids stay apart"

    # Every event resolves, as docs/sql.md resolves it (the id's live override, else the row's person_id),
    # to its id's person. That includes personless events of an id merged later: PostHog notes such ids
    # (posthog_personlessdistinctid) and, when one joins a person, writes its distinct-id row at
    # version 1 so that ClickHouse gets an override for the events already stored (mergeDistinctIds in
    # plugin-server/src/worker/ingestion/persons/person-merge-service.ts).
    def misattributed() -> list[str]:
        overrides = {
            r["distinct_id"]: r["person_id"]
            for r in stack.sql(
                "SELECT distinct_id, toString(person_id) AS person_id FROM person_distinct_id_overrides_current "
                f"WHERE team_id = {int(team_id)}"
            )
        }
        wrong = []
        for e in expected:
            resolved = overrides.get(e.distinct_id, _match(stored, e)["person_id"])
            person = person_of.get(e.distinct_id)
            if (person is not None and resolved != person) or (person is None and resolved in person_of.values()):
                wrong.append(f"{e.request.name} {e.event} of {e.distinct_id} (personless: {e.personless})")
        return wrong

    # Overrides are written beside the distinct-id rows, not necessarily in the same sink batch.
    wrong = poll_until_empty(misattributed, 30)
    assert not wrong, "events not resolved to their id's person:\n" + "\n".join(wrong)

    def person_problems() -> list[str]:
        rows = stack.sql(
            f"SELECT toString(id) AS id, properties, is_identified FROM person_current WHERE team_id = {int(team_id)}"
        )
        stored_persons = {r["id"]: r for r in rows}
        problems = []
        for ids, props in want:
            row = stored_persons.get(person_of[next(iter(ids))])
            if row is None:
                problems.append(f"person {sorted(ids)}: no row")
                continue
            got = json.loads(row["properties"])
            for key in sorted(set(got) | set(props)):
                if got.get(key, "<absent>") != props.get(key, "<absent>"):
                    problems.append(
                        f"person {sorted(ids)}: [{key!r}] stored {got.get(key, '<absent>')!r}, "
                        f"PostHog {props.get(key, '<absent>')!r}"
                    )
            # Only a merge marks a person identified (updateIsIdentified in PostHog's
            # person-merge-service.ts); an $identify without $anon_distinct_id (a Mixpanel people update)
            # only sets properties.
            merged = any(e.merge_with and e.distinct_id in ids for e in expected if not e.personless)
            if int(row["is_identified"]) != int(merged):
                problems.append(f"person {sorted(ids)}: is_identified {row['is_identified']}, PostHog {int(merged)}")
        return problems

    # A person's later versions may reach ClickHouse a sink batch after its first row.
    problems = poll_until_empty(person_problems, 30)
    assert not problems, "\n".join(problems)


def test_groups_as_posthog_stores_them(replayed: Replayed) -> None:
    stack, team_id, expected = replayed.stack, replayed.team_id, replayed.expected
    want: dict[str, dict[str, Any]] = {}
    for e in expected:
        if e.event == "$groupidentify":
            assert e.properties["$group_type"] == "company"
            want.setdefault(e.properties["$group_key"], {}).update(e.properties.get("$group_set") or {})

    def group_problems() -> list[str]:
        rows = stack.sql(
            "SELECT group_type_index, group_key, argMax(group_properties, version) AS props FROM groups "
            f"WHERE team_id = {int(team_id)} GROUP BY group_type_index, group_key"
        )
        got = {r["group_key"]: (int(r["group_type_index"]), json.loads(r["props"])) for r in rows}
        expected_groups = {k: (0, v) for k, v in want.items()}  # "company" is the team's first type: index 0
        return [] if got == expected_groups else [f"stored {got}, PostHog {expected_groups}"]

    problems = poll_until_empty(group_problems, 30)
    assert not problems, problems[0]
