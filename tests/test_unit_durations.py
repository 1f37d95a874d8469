"""Pure unit tests of eventpipe/durations.py: the --grace of `teams rotate-key` / `revoke-key`."""

from __future__ import annotations

import pytest

from eventpipe.durations import MAX_SECONDS, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("30s", 30),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("0s", 0),
        (" 2m ", 120),
        ("366d", MAX_SECONDS),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "h", "1x", "1h 30m", "-1s", "1h1", "1hh", "1H", "1e3s", "٣s", "s30"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration: use a number and a unit"):
        parse_duration(text)


def test_at_most_a_year() -> None:
    with pytest.raises(ValueError, match="longer than a year"):
        parse_duration("367d")
