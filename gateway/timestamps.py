"""Event time, decided the way PostHog does (documented in docs/timestamps.md).

1. ``timestamp`` and ``sent_at`` both known (and ``$ignore_sent_at`` not set): ``now + (timestamp − sent_at)``
   — the client's clock skew cancels out.
2. ``timestamp`` alone: as given.
3. ``offset`` (ms before sending): ``now − offset``.
4. otherwise ``now``.
A result more than 23 hours ahead of ``now`` is replaced by ``now`` and reported as a warning.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

FUTURE_LIMIT = timedelta(hours=23)
# The oldest time the events table stores (ClickHouse DateTime64 starts at 1900) and that format_ts
# writes with four year digits; an older one is treated as unparseable, never shipped.
MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)
_NUMERIC = re.compile(r"^-?\d+(\.\d+)?$")
_BARE_HOUR_ZONE = re.compile(r"([+-]\d{2})$")  # "+03" -> "+03:00"


def parse_time(value: object) -> datetime | None:
    """Parse a client timestamp into aware UTC, or None when it is not a time we understand.

    Accepts RFC 3339 / ISO 8601 (naive = UTC, ``Z``, bare ``+HH`` zones), ``YYYY-MM-DD HH:MM:SS[.f]``,
    date only, ``YYYY/MM/DD`` forms, RFC 2822, and epoch seconds or milliseconds (numbers or digit
    strings; more than 11 integer digits means milliseconds).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime):  # already parsed (the gateway parses an event's time once)
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if not isinstance(value, str):
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        # RFC 3339 as every SDK sends it: Python's own ISO parser takes it as it is (``Z``, offsets)
        # at a twentieth of the cost of the normalising below, which gives the same time for any
        # text this parser accepts; anything it refuses takes that path.
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return _utc(dt)
    text = value.strip()
    if not text:
        return None
    if _NUMERIC.match(text):
        return _from_epoch(float(text))
    iso = text.replace("/", "-") if text[:4].isdigit() else text
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    iso = _BARE_HOUR_ZONE.sub(r"\1:00", iso) if "T" in iso or " " in iso.strip() else iso
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        try:
            dt = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return _utc(dt)


def _utc(dt: datetime) -> datetime | None:
    """Aware UTC (naive is UTC); None before :data:`MIN_TIME` or when the zone pushes it out of range."""
    try:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0
        return None
    return dt if dt >= MIN_TIME else None


def _from_epoch(number: float) -> datetime | None:
    if number != number or number in (float("inf"), float("-inf")):  # NaN / inf
        return None
    if abs(number) >= 1e11:  # more than 11 integer digits: milliseconds
        number /= 1000.0
    try:
        dt = datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return dt if dt >= MIN_TIME else None


def resolve_timestamp(
    now: datetime,
    timestamp: object = None,
    sent_at: datetime | None = None,
    offset_ms: object = None,
    ignore_sent_at: bool = False,
) -> tuple[datetime, str | None]:
    """Final event time and, when the rule had to intervene, a warning code."""
    ts = parse_time(timestamp)
    warning = None
    if timestamp is not None and ts is None:
        warning = "ignored_invalid_timestamp"
    if ts is not None:
        try:
            result = now + (ts - sent_at) if sent_at is not None and not ignore_sent_at else ts
        except OverflowError:
            result, warning = now, "ignored_invalid_timestamp"
    elif isinstance(offset_ms, int | float) and not isinstance(offset_ms, bool):
        try:
            result = now - timedelta(milliseconds=offset_ms)
        except (OverflowError, ValueError):  # huge, NaN or infinite offsets
            result, warning = now, "ignored_invalid_offset"
    else:
        result = now
    if result - now > FUTURE_LIMIT:
        return now, "event_timestamp_in_future"
    if result < MIN_TIME:  # e.g. a sent_at far in the future skewing an old timestamp back
        return now, "ignored_invalid_timestamp"
    return result, warning
