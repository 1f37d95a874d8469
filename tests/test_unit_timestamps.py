"""Pure unit tests of gateway/timestamps.py: parse_time formats and the resolve_timestamp rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.timestamps import FUTURE_LIMIT, parse_time, resolve_timestamp

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
SEED = datetime(2020, 8, 16, 9, 3, 11, 913767, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------------------------
# parse_time
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 3339 / ISO 8601
        ("2020-08-16T09:03:11Z", utc(2020, 8, 16, 9, 3, 11)),
        ("2020-08-16T09:03:11z", utc(2020, 8, 16, 9, 3, 11)),
        ("2020-08-16T09:03:11.913Z", utc(2020, 8, 16, 9, 3, 11, 913000)),
        ("2020-08-16T09:03:11.913767Z", SEED),
        ("2020-08-16T09:03:11+00:00", utc(2020, 8, 16, 9, 3, 11)),
        ("2020-08-16T09:03:11+03:00", utc(2020, 8, 16, 6, 3, 11)),
        ("2020-08-16T09:03:11-05:00", utc(2020, 8, 16, 14, 3, 11)),
        ("2020-08-16T09:03:11.913767+05:30", utc(2020, 8, 16, 3, 33, 11, 913767)),
        ("2020-08-16T09:03:11+0300", utc(2020, 8, 16, 6, 3, 11)),
        # naive means UTC
        ("2020-08-16T09:03:11", utc(2020, 8, 16, 9, 3, 11)),
        ("2020-08-16T09:03:11.9", utc(2020, 8, 16, 9, 3, 11, 900000)),
        # bare +HH / -HH zones
        ("2020-08-16T09:03:11+03", utc(2020, 8, 16, 6, 3, 11)),
        ("2020-08-16T09:03:11-03", utc(2020, 8, 16, 12, 3, 11)),
        ("2020-08-16 09:03:11-05", utc(2020, 8, 16, 14, 3, 11)),
        ("2020-08-16T09:03:11.5+01", utc(2020, 8, 16, 8, 3, 11, 500000)),
        ("2020-08-16T09:03+03", utc(2020, 8, 16, 6, 3)),
        # YYYY-MM-DD HH:MM:SS.ffffff (the seed samples' format)
        ("2020-08-16 09:03:11.913767", SEED),
        ("2020-08-16 09:03:11", utc(2020, 8, 16, 9, 3, 11)),
        ("  2020-08-16 09:03:11.913767  ", SEED),
        # date only
        ("2020-08-16", utc(2020, 8, 16)),
        # slash dates
        ("2020/08/16", utc(2020, 8, 16)),
        ("2020/08/16 09:03:11", utc(2020, 8, 16, 9, 3, 11)),
        ("2020/08/16T09:03:11Z", utc(2020, 8, 16, 9, 3, 11)),
        # RFC 2822
        ("Sun, 16 Aug 2020 09:03:11 +0000", utc(2020, 8, 16, 9, 3, 11)),
        ("Sun, 16 Aug 2020 09:03:11 GMT", utc(2020, 8, 16, 9, 3, 11)),
        ("Sun, 16 Aug 2020 12:03:11 +0300", utc(2020, 8, 16, 9, 3, 11)),
        ("16 Aug 2020 09:03:11 -0000", utc(2020, 8, 16, 9, 3, 11)),
    ],
)
def test_parse_time_text_formats(value: str, expected: datetime) -> None:
    got = parse_time(value)
    assert got == expected
    assert got is not None and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # epoch seconds: numbers
        (1597568591, utc(2020, 8, 16, 9, 3, 11)),
        (1597568591.913, utc(2020, 8, 16, 9, 3, 11, 913000)),
        (0, utc(1970, 1, 1)),
        (-1, utc(1969, 12, 31, 23, 59, 59)),
        # epoch milliseconds: numbers with more than 11 integer digits
        (1597568591913, utc(2020, 8, 16, 9, 3, 11, 913000)),
        (1597568591913.0, utc(2020, 8, 16, 9, 3, 11, 913000)),
        # digit strings
        ("1597568591", utc(2020, 8, 16, 9, 3, 11)),
        ("1597568591.5", utc(2020, 8, 16, 9, 3, 11, 500000)),
        ("1597568591913", utc(2020, 8, 16, 9, 3, 11, 913000)),
        (" 1597568591 ", utc(2020, 8, 16, 9, 3, 11)),
        ("-1", utc(1969, 12, 31, 23, 59, 59)),
        # the 11 / 12 digit boundary
        (99_999_999_999, utc(1970, 1, 1) + timedelta(seconds=99_999_999_999)),  # 11 digits: seconds
        ("99999999999", utc(1970, 1, 1) + timedelta(seconds=99_999_999_999)),
        (100_000_000_000, utc(1970, 1, 1) + timedelta(milliseconds=100_000_000_000)),  # 12 digits: ms
        ("100000000000", utc(1970, 1, 1) + timedelta(milliseconds=100_000_000_000)),
    ],
)
def test_parse_time_epoch(value: object, expected: datetime) -> None:
    assert parse_time(value) == expected


def test_seconds_and_milliseconds_of_the_same_instant_agree() -> None:
    assert parse_time(1_700_000_000) == parse_time(1_700_000_000_000) == parse_time("1700000000000")


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        "",
        "   ",
        "garbage",
        "not a date at all",
        "2020-13-45",
        "2020-08-16T25:00:00",
        "2020-08-16 09:03:11 UTC",
        "1e9",
        "12:00",
        [],
        {},
        [2020, 8, 16],
        {"timestamp": "2020-08-16"},
        b"2020-08-16",
        float("nan"),
        float("inf"),
        float("-inf"),
        1e30,  # out of datetime's range even as milliseconds
        "9" * 40,
    ],
)
def test_parse_time_garbage_is_none(value: object) -> None:
    assert parse_time(value) is None


# ---------------------------------------------------------------------------------------------------------------------
# resolve_timestamp
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected", "warning"),
    [
        # 4. nothing: now
        ({}, NOW, None),
        # 2. timestamp alone: as given
        ({"timestamp": "2020-08-16 09:03:11.913767"}, SEED, None),
        ({"timestamp": 1597568591}, utc(2020, 8, 16, 9, 3, 11), None),
        # 1. timestamp + sent_at: now + (timestamp - sent_at)
        (
            {"timestamp": "2024-01-01T13:00:00Z", "sent_at": utc(2024, 1, 1, 14)},
            NOW - timedelta(hours=1),
            None,
        ),
        (
            # client clock 10 years slow: the skew cancels out
            {"timestamp": "2014-01-01T11:59:55Z", "sent_at": utc(2014, 1, 1, 12)},
            NOW - timedelta(seconds=5),
            None,
        ),
        (
            # client clock 2 days fast: still not "in the future" after correction
            {"timestamp": "2024-01-03T11:59:59Z", "sent_at": utc(2024, 1, 3, 12)},
            NOW - timedelta(seconds=1),
            None,
        ),
        # $ignore_sent_at: timestamp as given
        (
            {"timestamp": "2020-08-16 09:03:11.913767", "sent_at": utc(2024, 1, 1, 14), "ignore_sent_at": True},
            SEED,
            None,
        ),
        # 3. offset (ms before sending): now - offset
        ({"offset_ms": 1500}, NOW - timedelta(milliseconds=1500), None),
        ({"offset_ms": 0}, NOW, None),
        ({"offset_ms": 2.5}, NOW - timedelta(microseconds=2500), None),
        # a timestamp wins over an offset
        ({"timestamp": "2020-08-16 09:03:11.913767", "offset_ms": 1500}, SEED, None),
        # sent_at alone changes nothing
        ({"sent_at": utc(2000, 1, 1)}, NOW, None),
        # offsets that are not numbers are ignored
        ({"offset_ms": "1500"}, NOW, None),
        ({"offset_ms": True}, NOW, None),
        ({"offset_ms": None}, NOW, None),
        # invalid timestamp: warning, falls through to offset / now
        ({"timestamp": "garbage"}, NOW, "ignored_invalid_timestamp"),
        ({"timestamp": "garbage", "offset_ms": 1000}, NOW - timedelta(seconds=1), "ignored_invalid_timestamp"),
        ({"timestamp": True}, NOW, "ignored_invalid_timestamp"),
        ({"timestamp": {"a": 1}}, NOW, "ignored_invalid_timestamp"),
        # huge offset overflows the datetime range
        ({"offset_ms": 1e300}, NOW, "ignored_invalid_offset"),
        ({"offset_ms": float("inf")}, NOW, "ignored_invalid_offset"),
    ],
)
def test_resolve_timestamp_rules(kwargs: dict[str, object], expected: datetime, warning: str | None) -> None:
    assert resolve_timestamp(NOW, **kwargs) == (expected, warning)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timestamp": "2024-01-03T12:00:00Z"},  # 48 h ahead
        {"timestamp": (NOW + FUTURE_LIMIT + timedelta(seconds=1)).isoformat()},
        {"timestamp": "2024-01-01T12:00:00Z", "sent_at": utc(2023, 12, 30)},  # corrected to now + 2 days
        {"offset_ms": -24 * 3600 * 1000},  # negative offset: a day ahead
        {"timestamp": "9999-12-31T23:59:59Z"},
    ],
)
def test_more_than_23h_in_the_future_clamps_to_now(kwargs: dict[str, object]) -> None:
    assert resolve_timestamp(NOW, **kwargs) == (NOW, "event_timestamp_in_future")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ahead", "clamped"),
    [
        (timedelta(hours=22, minutes=59), False),
        (FUTURE_LIMIT, False),
        (FUTURE_LIMIT + timedelta(microseconds=1), True),
    ],
)
def test_future_limit_boundary(ahead: timedelta, clamped: bool) -> None:
    ts = NOW + ahead
    result, warning = resolve_timestamp(NOW, ts.isoformat())
    if clamped:
        assert (result, warning) == (NOW, "event_timestamp_in_future")
    else:
        assert (result, warning) == (ts, None)


def test_far_past_is_never_clamped() -> None:
    assert resolve_timestamp(NOW, "1971-01-01") == (utc(1971, 1, 1), None)


def test_skew_correction_overflow_falls_back_to_now() -> None:
    # timestamp far after sent_at: now + (ts - sent_at) leaves datetime's range
    assert resolve_timestamp(NOW, "9999-12-31T00:00:00Z", sent_at=utc(1, 1, 2)) == (NOW, "ignored_invalid_timestamp")


def test_nan_offset_falls_back_to_now() -> None:
    assert resolve_timestamp(NOW, offset_ms=float("nan")) == (NOW, "ignored_invalid_offset")


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:00:00.123Z",
        "2024-05-01T10:00:00.123456+02:00",
        "2024-05-01T10:00:00-05",
        "2024-05-01 10:00:00",
        "2024-05-01",
        "2024-05-01T23:59:59.999999-12:00",
        "1900-01-01T00:30:00+01:00",
        "1899-12-31T23:59:59Z",
        "0001-01-01T00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2024-13-01T00:00:00Z",
        "2024-05-01T10:00:00z",
        "2024-05-01T10:00:00 Z",
        "2024-05-01garbage",
    ],
)
def test_rfc3339_fast_path_agrees_with_the_normalising_path(value: str) -> None:
    # A leading space skips the fromisoformat fast path (value[4] is no longer "-"); strip() makes
    # the text the same again for the normalising path, so both paths see one value.
    assert parse_time(value) == parse_time(" " + value)
