"""eventpipe import's pure parts: reading exports, capture's validation, the frontier, checkpoint, pacing."""

from __future__ import annotations

import gzip
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import ujson

from eventpipe.exports import MAX_LINE_BYTES, Position, Record, capture_shaped, open_input, records
from eventpipe.importing import (
    Checkpoint,
    Frontier,
    Pacer,
    Refused,
    Summary,
    fingerprint,
    import_uuid,
    render_summary,
    resume_problem,
    source_size,
    to_message,
)
from gateway.events import RequestContext
from gateway.prepare import Limits, is_historical, prepare_text

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(inflated_bytes=2_000_000)
KEY = "phc_" + "a" * 40


def _read(data: bytes, start: Position | None = None) -> list[Record]:
    return list(records(open_input(io.BytesIO(data)), start))


def _event(i: int, **extra: object) -> dict[str, object]:
    return {"event": "e", "distinct_id": f"u{i}", "timestamp": "2024-05-01T10:00:00Z", "properties": {"i": i}, **extra}


def _jsonl(events: list[object]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


# -- reading ------------------------------------------------------------------------------------------------


def test_jsonl_lines_become_records_with_their_line_numbers() -> None:
    data = _jsonl([_event(1), _event(2)]) + b"\n" + b"not json\n" + _jsonl([[1]])
    got = _read(data)
    assert [(r.line, r.item) for r in got] == [(1, 0), (2, 0), (4, 0), (5, 0)]
    assert got[0].event == _event(1)
    assert got[2].refused is not None and got[2].refused.reason == "invalid_json"
    assert got[3].refused is not None and got[3].refused.reason == "not_an_event"


def test_gzip_is_recognised_by_its_magic_bytes_also_concatenated() -> None:
    data = gzip.compress(_jsonl([_event(1)])) + gzip.compress(_jsonl([_event(2)]))
    assert [r.event and r.event["distinct_id"] for r in _read(data)] == ["u1", "u2"]


def test_a_posthog_batch_export_row_is_turned_into_a_captured_event() -> None:
    row = {
        "uuid": "0190b4a2-0000-7000-8000-000000000001",
        "event": "$pageview",
        "distinct_id": "user-1",
        "team_id": 2,
        "person_id": "p",
        "properties": json.dumps({"$current_url": "https://x.test", "$set": {"a": 1}}),
        "set": json.dumps({"a": 1}),
        "set_once": "",
        "elements": json.dumps("a:nth-child=1"),
        "timestamp": "2024-05-01 10:00:00.123456",
        "created_at": "2024-05-01 10:00:01.000000",
        "ip": "1.2.3.4",
        "site_url": "",
    }
    assert capture_shaped(row) == {
        "uuid": row["uuid"],
        "event": "$pageview",
        "distinct_id": "user-1",
        "properties": {"$current_url": "https://x.test", "$set": {"a": 1}},
        "$set": {"a": 1},
        "elements_chain": "a:nth-child=1",
        "timestamp": "2024-05-01 10:00:00.123456",
    }


def test_an_api_results_page_and_a_query_with_columns_give_their_items() -> None:
    page = {"next": None, "results": [{"id": "0190b4a2-0000-7000-8000-000000000002", **_event(1)}, _event(2)]}
    query = {"columns": ["event", "distinct_id", "timestamp"], "results": [["e", "q1", "2024-05-01T00:00:00Z"]]}
    got = _read(_jsonl([page, query]))
    assert [(r.line, r.item) for r in got] == [(1, 0), (1, 1), (2, 0)]
    assert got[0].event and got[0].event["uuid"] == "0190b4a2-0000-7000-8000-000000000002"
    assert got[2].event == {"event": "e", "distinct_id": "q1", "timestamp": "2024-05-01T00:00:00Z"}
    assert got[0].next == Position(0, 1, 1) and got[1].next.line == 2  # resuming mid-page re-reads the page


def test_a_pretty_printed_document_is_read_whole_and_a_broken_first_line_is_still_lines() -> None:
    doc = json.dumps({"results": [_event(1), _event(2)]}, indent=2).encode()
    assert [r.event and r.event["distinct_id"] for r in _read(doc)] == ["u1", "u2"]
    broken = b'{"event": "e", "distinct_id"\n' + _jsonl([_event(2)])
    got = _read(broken)
    assert [r.line for r in got] == [1, 2] and got[0].refused and got[1].event


def test_an_overlong_line_is_refused_without_being_kept() -> None:
    data = b'{"x": "' + b"a" * (MAX_LINE_BYTES + 10) + b'"}\n' + _jsonl([_event(2)])
    got = _read(data)
    assert got[0].refused and got[0].refused.reason == "line_too_long"
    assert got[1].line == 2 and got[1].event


def test_reading_resumes_where_a_record_says() -> None:
    data = _jsonl([_event(1), {"results": [_event(2), _event(3)]}, _event(4)])
    got = _read(data)
    for i, record in enumerate(got[:-1]):
        again = _read(data, record.next)
        assert [(r.line, r.item) for r in again] == [(r.line, r.item) for r in got[i + 1 :]]
    assert _read(data, got[-1].next) == []


# -- validation ------------------------------------------------------------------------------------------------


def test_an_event_gets_capture_s_message_for_the_team_with_its_timestamp_as_sent() -> None:
    key, value = to_message(_event(1, uuid="0190b4a2-0000-7000-8000-000000000003"), KEY, 7, NOW, LIMITS)
    raw = ujson.loads(value)
    assert key == b"7:u1"
    assert raw["team_id"] == 7 and raw["token"] == KEY
    assert raw["timestamp"] == "2024-05-01 10:00:00.000000"
    assert raw["uuid"] == "0190b4a2-0000-7000-8000-000000000003"


def test_a_line_s_own_api_key_never_decides_the_team() -> None:
    event = capture_shaped(_event(1, api_key="phc_other", properties={"token": "phc_other"}))
    raw = ujson.loads(to_message(event, KEY, 7, NOW, LIMITS)[1])
    assert raw["token"] == KEY and raw["team_id"] == 7


def test_an_event_without_uuid_gets_the_same_one_every_import() -> None:
    a = ujson.loads(to_message(_event(1), KEY, 7, NOW, LIMITS)[1])["uuid"]
    b = ujson.loads(to_message(_event(1), KEY, 7, datetime(2027, 1, 1, tzinfo=UTC), LIMITS)[1])["uuid"]
    c = ujson.loads(to_message(_event(2), KEY, 7, NOW, LIMITS)[1])["uuid"]
    assert a == b != c
    ms = int(datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp() * 1000)
    assert a.replace("-", "")[:12] == f"{ms:012x}"  # a UUIDv7 with the event's own time
    assert import_uuid({"b": 1, "a": 2}, None) == import_uuid({"a": 2, "b": 1}, None)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"event": "e", "distinct_id": "u"}, "missing_timestamp"),
        ({"event": "e", "distinct_id": "u", "timestamp": "yesterday"}, "invalid_timestamp"),
        ({"event": "e", "distinct_id": "u", "timestamp": "2026-01-03T00:00:00Z"}, "timestamp_in_future"),
        ({"event": "e", "timestamp": "2024-01-01T00:00:00Z"}, "invalid_payload (distinct_id)"),
        ({"distinct_id": "u", "timestamp": "2024-01-01T00:00:00Z"}, "invalid_payload (event)"),
        (
            {"event": "e", "distinct_id": "u", "timestamp": "2024-01-01T00:00:00Z", "uuid": "x"},
            "invalid_payload (uuid)",
        ),
        (
            {"event": "$performance_event", "distinct_id": "u", "timestamp": "2024-01-01T00:00:00Z"},
            "dropped_by_capture",
        ),
    ],
)
def test_what_capture_refuses_is_refused_with_a_reason(event: dict[str, object], reason: str) -> None:
    with pytest.raises(Refused) as err:
        to_message(event, KEY, 7, NOW, LIMITS)
    assert err.value.reason == reason


def test_an_event_over_the_size_limit_is_refused() -> None:
    with pytest.raises(Refused) as err:
        to_message(_event(1, properties={"x": "a" * 2000}), KEY, 7, NOW, Limits(2_000_000, max_event_bytes=1000))
    assert err.value.reason == "payload_too_large (properties)"


def test_the_gateway_flags_a_historical_migration_batch() -> None:
    body = {"api_key": KEY, "historical_migration": True, "batch": [_event(1)]}
    assert prepare_text(json.dumps(body).encode(), RequestContext(now=NOW), LIMITS).historical
    assert not prepare_text(
        json.dumps({**body, "historical_migration": "yes"}).encode(), RequestContext(now=NOW), LIMITS
    ).historical
    assert not is_historical([_event(1)])


# -- frontier, checkpoint, pacing ----------------------------------------------------------------------------------


def _record(line: int, item: int = 0, last: bool = True) -> Record:
    nxt = Position(line * 10, line + 1) if last else Position((line - 1) * 10, line, item + 1)
    return Record(line, item, nxt, event={})


def test_the_frontier_stops_at_the_first_record_not_acked() -> None:
    frontier = Frontier(Position())
    done = [frontier.add(_record(1)), frontier.add(_record(2, 0, last=False)), frontier.add(_record(2, 1))]
    frontier.add(_record(3), Refused("invalid_json"))
    done[1]()
    assert frontier.advance() == Position()  # line 1 not acked yet
    done[0]()
    assert frontier.advance() == Position(10, 2, 1)  # resume at line 2's second item
    done[2]()
    assert frontier.advance() == Position(30, 4)
    assert frontier.summary.imported == 3 and frontier.summary.refused == {"invalid_json": 1}
    assert len(frontier) == 0


def test_a_checkpoint_round_trips_and_knows_its_file(tmp_path: Path) -> None:
    export = tmp_path / "e.jsonl"
    export.write_bytes(_jsonl([_event(1)]))
    summary = Summary(5)
    summary.refuse(3, 0, Refused("invalid_json", "the line is not JSON"))
    cp = Checkpoint(str(export), fingerprint(export), 7, Position(100, 4, 0), summary)
    cp.save(tmp_path / "cp.json")
    loaded = Checkpoint.load(tmp_path / "cp.json")
    assert loaded == cp
    assert resume_problem(cp, fingerprint(export), 7) is None
    assert "team 7" in (resume_problem(cp, fingerprint(export), 8) or "")
    export.write_bytes(_jsonl([_event(1), _event(2)]))
    assert "changed" in (resume_problem(cp, fingerprint(export), 7) or "")
    export.write_bytes(_jsonl([_event(9)]))  # same size, other bytes
    assert "other content" in (resume_problem(cp, fingerprint(export), 7) or "")
    assert Checkpoint.load(tmp_path / "missing.json") is None


def test_the_pacer_keeps_the_rate_and_does_not_burst_after_a_stall() -> None:
    pacer = Pacer(rate=100)
    assert pacer.delay(10, 0.0) == 0.0
    assert pacer.delay(10, 0.0) == pytest.approx(0.1)
    assert pacer.delay(10, 0.05) == pytest.approx(0.15)
    # idle for a minute: at most one second of catching up
    assert pacer.delay(100, 60.0) == 0.0
    assert pacer.delay(100, 60.0) == pytest.approx(0.0)
    assert pacer.delay(100, 60.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Pacer(0)


def test_the_summary_lists_refused_lines_by_reason_bounded() -> None:
    summary = Summary(10)
    for line in range(1, 151):
        summary.refuse(line, 0, Refused("missing_timestamp", "needs a timestamp"))
    summary.refuse(151, 2, Refused("invalid_json"))
    text = render_summary(summary, 2.0, interrupted=False, this_run=4)
    assert "imported 10 events, refused 151 (4 in 2.0 s this run: 2 events/s)" in text
    assert "missing_timestamp: 150 (line 1, line 2," in text and "and 50 more" in text
    assert "invalid_json: 1 (beyond the listed lines)" in text
    assert len(summary.listed) == 100


def test_only_a_regular_file_has_a_size_for_the_eta(tmp_path: Path) -> None:
    export = tmp_path / "e.jsonl"
    export.write_bytes(b"12345")
    with export.open("rb") as f:
        assert source_size(f) == 5
    read, write = os.pipe()
    with os.fdopen(read, "rb") as r, os.fdopen(write, "wb"):
        assert source_size(r) is None
    assert source_size(io.BytesIO(b"x")) is None


def test_a_pretty_printed_document_resumes_at_its_next_item() -> None:
    doc = json.dumps([_event(1), _event(2), _event(3)], indent=2).encode()
    got = _read(doc)
    assert [r.item for r in got] == [0, 1, 2]
    again = _read(doc, got[0].next)
    assert [r.event and r.event["distinct_id"] for r in again] == ["u2", "u3"]
    assert _read(doc, got[-1].next) == []
