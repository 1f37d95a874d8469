"""Pure unit tests of eventpipe/teams.py: api key shapes, Team records and the registry fold."""

from __future__ import annotations

import pytest
import ujson

from eventpipe.teams import API_KEY_PREFIX, Registry, Team, api_key_shape_error, new_api_key, project_key_error


def team(team_id: int, key: str, name: str = "t", revoked: bool = False) -> Team:
    return Team(team_id=team_id, name=name, api_key=key, created_at="2024-01-01 00:00:00.000000", revoked=revoked)


def fold(*records: tuple[str, bytes | None]) -> Registry:
    reg = Registry()
    for offset, (key, value) in enumerate(records):
        reg.apply(offset, key, value)
    return reg


def claim(team_id: int, key: str, **kw: object) -> tuple[str, bytes]:
    return key, team(team_id, key, **kw).to_json()  # type: ignore[arg-type]


def tombstone(key: str) -> tuple[str, None]:
    return key, None


# ---------------------------------------------------------------------------------------------------------------------
# api keys
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("phc_abc", None),
        ("a", None),
        ("x" * 64, None),
        ("!\"#$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~", None),
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        (123, "missing_api_key"),
        (b"phc_abc", "missing_api_key"),
        (["phc_abc"], "missing_api_key"),
        ("x" * 65, "invalid_api_key"),
        ("has space", "invalid_api_key"),
        (" phc", "invalid_api_key"),
        ("phc\t", "invalid_api_key"),
        ("phc_é", "invalid_api_key"),
        ("phc\x7f", "invalid_api_key"),
        ("phc\x00", "invalid_api_key"),
    ],
)
def test_api_key_shape_error(key: object, error: str | None) -> None:
    assert api_key_shape_error(key) == error


@pytest.mark.parametrize("key", ["phc_x\n", "x" * 64 + "\n"])
def test_trailing_newline_is_not_a_valid_key(key: str) -> None:
    assert api_key_shape_error(key) == "invalid_api_key"


def test_new_api_keys() -> None:
    keys = {new_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(API_KEY_PREFIX)
        assert len(key) == 47
        assert api_key_shape_error(key) is None


def test_team_json_round_trip() -> None:
    t = team(7, "phc_k", name="Ünïcode team", revoked=True)
    assert Team.from_json(t.to_json()) == t
    assert ujson.loads(t.to_json()) == {
        "team_id": 7,
        "name": "Ünïcode team",
        "api_key": "phc_k",
        "created_at": "2024-01-01 00:00:00.000000",
        "revoked": True,
    }


def test_team_from_json_defaults_and_coercion() -> None:
    t = Team.from_json(b'{"team_id": "3", "name": 5, "api_key": "k", "created_at": "c"}')
    assert t == Team(3, "5", "k", "c", False)


# ---------------------------------------------------------------------------------------------------------------------
# the fold
# ---------------------------------------------------------------------------------------------------------------------


def test_empty_registry() -> None:
    reg = Registry()
    assert reg.team_id("phc_a") is None
    assert reg.next_team_id() == 1
    assert reg.teams() == []
    assert len(reg) == 0


def test_distinct_teams_resolve() -> None:
    reg = fold(claim(1, "a"), claim(2, "b"), claim(3, "c"))
    assert [reg.team_id(k) for k in "abc"] == [1, 2, 3]
    assert reg.team_id("unknown") is None
    assert reg.next_team_id() == 4
    assert [t.team_id for t in reg.teams()] == [1, 2, 3]
    assert reg.owns(team(2, "b"))
    assert not reg.owns(team(3, "b"))


def test_lowest_offset_owns_a_team_id() -> None:
    reg = fold(claim(1, "winner"), claim(1, "loser"))
    assert reg.team_id("winner") == 1
    assert reg.team_id("loser") is None
    assert reg.owns(team(1, "winner"))
    assert not reg.owns(team(1, "loser"))
    assert [t.api_key for t in reg.teams()] == ["winner"]
    assert reg.next_team_id() == 2


def test_later_claims_are_ignored_even_when_repeated() -> None:
    reg = fold(claim(1, "a"), claim(1, "b"), claim(1, "c"), claim(1, "b"))
    assert reg.team_id("a") == 1
    assert reg.team_id("b") is None
    assert reg.team_id("c") is None


def test_loser_retries_with_the_next_id_after_withdrawing() -> None:
    # what eventpipe.kafka.create_team does after losing a race
    reg = fold(claim(1, "a"), claim(1, "b"), tombstone("b"), claim(2, "b2"))
    assert reg.team_id("a") == 1
    assert reg.team_id("b") is None
    assert reg.team_id("b2") == 2
    assert len(reg) == 2
    assert [t.api_key for t in reg.teams()] == ["a", "b2"]
    assert reg.next_team_id() == 3


@pytest.mark.parametrize("offsets", [(0, 1), (10, 11), (5, 1000)])
def test_winner_is_independent_of_absolute_offsets(offsets: tuple[int, int]) -> None:
    reg = Registry()
    reg.apply(offsets[0], "a", team(9, "a").to_json())
    reg.apply(offsets[1], "b", team(9, "b").to_json())
    assert (reg.team_id("a"), reg.team_id("b")) == (9, None)


def test_same_record_replayed_is_idempotent() -> None:
    reg = Registry()
    for _ in range(3):
        reg.apply(0, "a", team(1, "a").to_json())
    assert reg.team_id("a") == 1
    assert len(reg) == 1


def test_tombstone_of_unknown_key_is_harmless() -> None:
    reg = fold(claim(1, "a"), tombstone("zzz"), tombstone(""))
    assert reg.team_id("a") == 1
    assert len(reg) == 1


def test_tombstone_removes_the_key() -> None:
    reg = fold(claim(1, "a"), claim(2, "b"), tombstone("b"))
    assert reg.team_id("b") is None
    assert len(reg) == 1


def test_update_of_the_owner_keeps_ownership() -> None:
    reg = fold(claim(1, "a", name="old"), claim(1, "b"), claim(1, "a", name="new"))
    assert reg.team_id("a") == 1
    assert reg.team_id("b") is None
    assert [t.name for t in reg.teams()] == ["new"]


@pytest.mark.parametrize(
    "records",
    [
        [claim(1, "a", revoked=True)],
        [claim(1, "a"), claim(1, "a", revoked=True)],
    ],
)
def test_revoked_keys_are_unresolvable(records: list[tuple[str, bytes]]) -> None:
    reg = fold(*records)
    assert reg.team_id("a") is None
    assert not reg.owns(team(1, "a"))
    assert [(t.api_key, t.revoked) for t in reg.teams()] == [("a", True)]  # still listed
    assert reg.next_team_id() == 2  # and its id never reused


def test_revoked_owner_still_blocks_later_claims() -> None:
    reg = fold(claim(1, "a"), claim(1, "a", revoked=True), claim(1, "b"))
    assert reg.team_id("a") is None
    assert reg.team_id("b") is None


def test_unrevoking_restores_the_key() -> None:
    reg = fold(claim(1, "a"), claim(1, "a", revoked=True), claim(1, "a", revoked=False))
    assert reg.team_id("a") == 1


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"",
        b"null",
        b"[]",
        b"42",
        b'{"team_id": 5}',
        b'{"team_id": "x", "name": "n", "api_key": "k", "created_at": "c"}',
        b'{"name": "n", "api_key": "k", "created_at": "c"}',
    ],
)
def test_malformed_records_are_skipped(value: bytes) -> None:
    reg = fold(claim(1, "a"), ("k", value), claim(2, "b"))
    assert reg.team_id("a") == 1
    assert reg.team_id("b") == 2
    assert reg.team_id("k") is None
    assert len(reg) == 2
    assert reg.next_team_id() == 3


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], 1),
        ([claim(1, "a")], 2),
        ([claim(5, "a")], 6),
        ([claim(5, "a"), claim(2, "b")], 6),
        ([claim(1, "a"), claim(1, "b")], 2),  # a lost claim allocates nothing
        ([claim(3, "a"), claim(3, "b"), tombstone("b"), claim(4, "b2")], 5),
        ([claim(1, "a"), ("x", b"garbage")], 2),
    ],
)
def test_next_team_id(records: list[tuple[str, bytes | None]], expected: int) -> None:
    assert fold(*records).next_team_id() == expected


def test_teams_are_sorted_by_id() -> None:
    reg = fold(claim(3, "c"), claim(1, "a"), claim(2, "b"))
    assert [t.team_id for t in reg.teams()] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------------
# project keys kept from PostHog (teams create --api-key)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["phc_" + "a" * 43, "phc_" + "A1-_" * 5, "phc_" + "z" * 60, new_api_key()])
def test_project_keys_that_can_be_kept(key: str) -> None:
    assert project_key_error(key) is None


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("phx_" + "a" * 43, "personal api key"),
        ("phc_short", "phc_ followed by"),
        ("phc_" + "a" * 61, "phc_ followed by"),
        ("abc" + "a" * 43, "phc_ followed by"),
        ("phc_" + "a" * 42 + "!", "phc_ followed by"),
        ("phc_" + "a" * 42 + "\n", "phc_ followed by"),
        ("", "phc_ followed by"),
    ],
)
def test_project_keys_that_are_refused(key: str, says: str) -> None:
    error = project_key_error(key)
    assert error is not None and says in error
