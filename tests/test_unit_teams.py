"""Pure unit tests of eventpipe/teams.py: api key shapes, Team records and the registry fold."""

from __future__ import annotations

import random

import pytest
import ujson

from eventpipe.teams import (
    API_KEY_PREFIX,
    Key,
    Registry,
    Team,
    TeamError,
    api_key_shape_error,
    claim_record,
    ending,
    key_record,
    key_state_record,
    name_record,
    new_api_key,
    project_key_error,
)


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


def listed_keys(reg: Registry) -> list[str]:
    return [k.api_key for t in reg.teams() for k in t.keys]


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
    assert listed_keys(reg) == ["winner"]
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
    assert listed_keys(reg) == ["a", "b2"]
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
    assert [(k.api_key, k.revoked) for t in reg.teams() for k in t.keys] == [("a", True)]  # still listed
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


LEGACY_KEY = "Ab3_-" * 8 + "xyz"  # a project key from before PostHog's phc_ prefix


@pytest.mark.parametrize("key", ["phc_" + "a" * 43, "phc_" + "A1-_" * 5, "phc_" + "z" * 60, new_api_key(), LEGACY_KEY])
def test_project_keys_that_can_be_kept(key: str) -> None:
    assert project_key_error(key) is None


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("phx_" + "a" * 43, "personal api key (phx_…)"),
        ("phs_" + "a" * 43, "secret api key (phs_…)"),
        ("pha_" + "a" * 43, "OAuth token (pha_…)"),
        ("phr_" + "a" * 43, "OAuth token (phr_…)"),
        ("phc_short", "phc_ followed by"),
        ("phc_" + "a" * 61, "phc_ followed by"),
        ("a" * 31, "phc_ followed by"),
        ("a" * 65, "phc_ followed by"),
        ("phc_" + "a" * 42 + "!", "phc_ followed by"),
        ("phc_" + "a" * 42 + "\n", "phc_ followed by"),
        ("", "phc_ followed by"),
    ],
)
def test_project_keys_that_are_refused(key: str, says: str) -> None:
    error = project_key_error(key)
    assert error is not None and says in error


# ---------------------------------------------------------------------------------------------------------------------
# several keys per team: rotation, grace, revocation, renames (records as eventpipe.kafka writes them)
# ---------------------------------------------------------------------------------------------------------------------

K1, K2, K3 = "phc_" + "1" * 43, "phc_" + "2" * 43, "phc_" + "3" * 43
T0 = 1_800_000_000.0  # the injected clock's start (a Unix time)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fold_at(clock: Clock, *records: tuple[str, bytes | None]) -> Registry:
    reg = Registry(clock=clock)
    for offset, (key, value) in enumerate(records):
        reg.apply(offset, key, value)
    return reg


def new_claim(team_id: int, key: str, name: str = "t") -> tuple[str, bytes]:
    return claim_record(team_id, name, key, "2024-01-01 00:00:00.000000")


def new_key(team_id: int, key: str) -> tuple[str, bytes]:
    return key_record(team_id, key, "2024-01-02 00:00:00.000000")


def ends(team_id: int, key: str, valid_until: float | None = None, revoked: bool = False) -> tuple[str, bytes]:
    return key_state_record(Key(key, team_id, ""), valid_until, revoked, "2024-01-03 00:00:00.000000")


def test_personal_keys_are_refused_by_shape() -> None:
    assert api_key_shape_error("phx_" + "a" * 40) == "personal_api_key"
    assert api_key_shape_error("phc_" + "a" * 40) is None


def test_a_new_team_claim_resolves() -> None:
    reg = fold_at(Clock(), new_claim(1, K1, "web"))
    assert reg.team_id(K1) == 1
    assert reg.next_team_id() == 2
    [info] = reg.teams()
    assert (info.team_id, info.name, [k.api_key for k in info.keys]) == (1, "web", [K1])
    assert info.keys[0].state(T0) == "active"


def test_rotation_keeps_the_old_key_until_its_grace_ends_by_the_clock_alone() -> None:
    clock = Clock()
    reg = fold_at(clock, new_claim(1, K1), new_key(1, K2), ends(1, K1, valid_until=T0 + 60))
    assert (reg.team_id(K1), reg.team_id(K2)) == (1, 1)
    [info] = reg.teams()
    assert [k.state(T0) for k in info.keys] == ["valid until 2027-01-15 08:01:00Z", "active"]
    assert info.main_key(T0).api_key == K2
    clock.now = T0 + 59.999
    assert reg.team_id(K1) == 1
    clock.now = T0 + 60  # no record arrived: the clock alone ends the grace
    assert (reg.team_id(K1), reg.team_id(K2)) == (None, 1)
    assert reg.holds(K1)  # still the team's, never given to another
    assert [k.state(clock.now) for k in reg.teams()[0].keys] == ["revoked", "active"]


def test_a_revoked_key_is_refused_at_once_and_still_listed() -> None:
    reg = fold_at(Clock(), new_claim(1, K1), new_key(1, K2), ends(1, K2, revoked=True))
    assert (reg.team_id(K1), reg.team_id(K2)) == (1, None)
    assert reg.holds(K2) and reg.key(K2) == Key(K2, 1, "2024-01-02 00:00:00.000000", None, True)
    assert reg.teams()[0].as_json(T0)["keys"][1] == {
        "api_key": K2,
        "state": "revoked",
        "valid_until": None,
        "created_at": "2024-01-02 00:00:00.000000",
    }


def test_a_team_with_every_key_revoked_is_listed_revoked() -> None:
    reg = fold_at(Clock(), new_claim(1, K1), ends(1, K1, revoked=True))
    info = reg.teams()[0]
    assert info.valid_keys(T0) == [] and info.main_key(T0).api_key == K1
    assert info.as_json(T0)["revoked"] is True
    assert reg.next_team_id() == 2  # its id is never reused


def test_the_latest_key_state_wins() -> None:
    clock = Clock()
    reg = fold_at(clock, new_claim(1, K1), ends(1, K1, valid_until=T0 + 10), ends(1, K1, revoked=True))
    assert reg.team_id(K1) is None
    reg = fold_at(clock, new_claim(1, K1), ends(1, K1, revoked=True), ends(1, K1, valid_until=T0 + 10))
    assert reg.team_id(K1) == 1  # writers never do this (see ending), but the fold stays "latest wins"


def test_rename_latest_wins_and_only_for_an_owned_team() -> None:
    reg = fold_at(Clock(), new_claim(1, K1, "old"), name_record(1, "mid"), name_record(1, "new"), name_record(7, "x"))
    assert [(t.team_id, t.name) for t in reg.teams()] == [(1, "new")]
    assert reg.team_id(K1) == 1


def test_team_id_race_lowest_offset_wins_and_the_loser_retries() -> None:
    winner, loser = new_claim(1, K1, "a"), new_claim(1, K2, "b")
    reg = fold_at(Clock(), winner, loser)
    assert reg.accepted(winner[0]) and not reg.accepted(loser[0])
    assert (reg.team_id(K1), reg.team_id(K2), reg.holds(K2)) == (1, None, False)
    retry = new_claim(reg.next_team_id(), K2, "b")
    reg.apply(2, loser[0], None)
    reg.apply(3, *retry)
    assert reg.accepted(retry[0]) and reg.team_id(K2) == 2
    assert [(t.team_id, t.name) for t in reg.teams()] == [(1, "a"), (2, "b")]


def test_two_claims_of_one_key_the_first_wins() -> None:
    first, second = new_claim(1, K1, "a"), new_claim(2, K1, "b")
    reg = fold_at(Clock(), first, second)
    assert reg.accepted(first[0]) and not reg.accepted(second[0])
    assert reg.team_id(K1) == 1 and [t.name for t in reg.teams()] == ["a"]


def test_a_key_is_never_given_to_another_team_even_revoked() -> None:
    reg = fold_at(Clock(), new_claim(1, K1), ends(1, K1, revoked=True), new_claim(2, K1), new_key(3, K1))
    assert reg.team_id(K1) is None and [t.team_id for t in reg.teams()] == [1]
    reg = fold_at(Clock(), new_claim(1, K1), new_claim(2, K2), new_key(2, K1))
    assert reg.team_id(K1) == 1 and [len(t.keys) for t in reg.teams()] == [1, 1]


def test_a_key_of_a_team_no_one_owns_is_ignored() -> None:
    record = new_key(5, K2)
    reg = fold_at(Clock(), new_claim(1, K1), record)
    assert reg.team_id(K2) is None and not reg.accepted(record[0]) and reg.key_of(record[0]) is None
    assert reg.next_team_id() == 2


def test_key_of_names_the_key_a_winning_record_added() -> None:
    record = new_key(1, K2)
    reg = fold_at(Clock(), new_claim(1, K1), record)
    assert reg.key_of(record[0]) == Key(K2, 1, "2024-01-02 00:00:00.000000")
    assert reg.key_of("key:1:unknown") is None


def test_claims_never_share_a_kafka_key() -> None:
    assert new_claim(1, K1)[0] != new_claim(1, K1)[0]
    assert new_key(1, K2)[0] != new_key(1, K2)[0]
    assert ends(1, K1)[0] == ends(1, K1, revoked=True)[0]  # a key's state: latest wins, as compaction keeps
    assert name_record(1, "a")[0] == name_record(1, "b")[0]


@pytest.mark.parametrize(
    "value",
    [
        b'{"type": "nope", "team_id": 1}',
        b'{"type": "team", "team_id": 2}',
        b'{"type": "key", "api_key": "k"}',
        b'{"type": "key_state", "api_key": "' + K1.encode() + b'", "valid_until": "soon"}',
        b'{"type": "key_state", "api_key": "' + K1.encode() + b'", "valid_until": 1e999}',
        b'{"type": "name", "name": "x"}',
    ],
)
def test_malformed_new_records_are_skipped(value: bytes) -> None:
    reg = fold_at(Clock(), new_claim(1, K1, "a"), ("x", value))
    assert reg.team_id(K1) == 1 and [t.name for t in reg.teams()] == ["a"]


def test_records_of_before_fold_with_the_new_ones() -> None:
    # what `teams create` wrote before: Team records keyed by api key, a lost race withdrawn
    clock = Clock()
    reg = fold_at(
        clock,
        claim(1, K1, name="legacy"),
        claim(1, "phc_lost"),
        tombstone("phc_lost"),
        claim(2, K3, name="other"),
        new_claim(3, "phc_" + "4" * 43, "new"),
        new_key(1, K2),
        ends(1, K1, valid_until=T0 + 5),
        name_record(1, "renamed"),
    )
    assert [(t.team_id, t.name) for t in reg.teams()] == [(1, "renamed"), (2, "other"), (3, "new")]
    assert (reg.team_id(K1), reg.team_id(K2), reg.team_id(K3)) == (1, 1, 2)
    clock.now = T0 + 5
    assert (reg.team_id(K1), reg.team_id(K2)) == (None, 1)
    assert reg.next_team_id() == 4


def test_a_record_of_before_revoked_can_be_followed_by_a_rotation() -> None:
    reg = fold_at(Clock(), claim(1, K1, revoked=True), new_key(1, K2))
    assert (reg.team_id(K1), reg.team_id(K2)) == (None, 1)
    assert [k.state(T0) for k in reg.teams()[0].keys] == ["revoked", "active"]


def compacted(log: list[tuple[str, bytes | None]]) -> list[tuple[int, str, bytes | None]]:
    """What log compaction leaves: the latest record of each Kafka key at its own offset; tombstones
    kept or gone (both happen: a tombstone lives delete.retention.ms)."""
    latest = {key: offset for offset, (key, _value) in enumerate(log)}
    return [(offset, key, value) for offset, (key, value) in enumerate(log) if latest[key] == offset]


KEYS = [f"phc_{i:043d}" for i in range(12)]
LEGACY_KEYS = [f"phc_legacy{i:037d}" for i in range(6)]


def random_log(rng: random.Random) -> list[tuple[str, bytes | None]]:
    """Records as racing writers of create, rotate-key, revoke-key and rename append them, and records
    of before (each key written once, as `teams create` of before wrote them)."""
    log: list[tuple[str, bytes | None]] = []
    legacy = list(LEGACY_KEYS)
    for _ in range(rng.randint(1, 40)):
        team_id, key = rng.randint(1, 5), rng.choice(KEYS + LEGACY_KEYS)
        op = rng.random()
        if op < 0.3 and not key.startswith("phc_legacy"):
            log.append(new_claim(team_id, key, rng.choice("abc")))
            if rng.random() < 0.3:
                log.append((log[-1][0], None))  # a loser withdrawing (or not: writers may crash)
        elif op < 0.5 and not key.startswith("phc_legacy"):
            log.append(new_key(team_id, key))
        elif op < 0.8:
            until = T0 + rng.choice([-10, 0, 10, 100])
            log.append(ends(team_id, key, valid_until=until, revoked=rng.random() < 0.3))
            if rng.random() < 0.05:
                log.append((log[-1][0], None))  # no writer does this; the fold must still agree
        elif op < 0.9:
            log.append(name_record(team_id, rng.choice("xyz")))
        elif legacy:
            log.append(claim(team_id, legacy.pop(rng.randrange(len(legacy)))))
            if rng.random() < 0.3:
                log.append((log[-1][0], None))
    return log


def snapshot(reg: Registry, clock: Clock) -> object:
    lookups = [[reg.team_id(k) for k in KEYS + LEGACY_KEYS] for clock.now in (T0, T0 + 50, T0 + 1e3)]
    return reg.teams(), reg.next_team_id(), lookups


@pytest.mark.parametrize("seed", range(300))
def test_compaction_never_changes_the_fold(seed: int) -> None:
    rng = random.Random(seed)
    log = random_log(rng)
    clock = Clock()
    full = fold_at(clock, *log)
    kept = compacted(log)
    for drop_tombstones in (False, True):
        reg = Registry(clock=clock)
        for offset, key, value in kept:
            if not (drop_tombstones and value is None):
                reg.apply(offset, key, value)
        assert snapshot(reg, clock) == snapshot(full, clock), log


@pytest.mark.parametrize("seed", range(300))
def test_folding_as_records_arrive_equals_folding_them_all_again(seed: int) -> None:
    rng = random.Random(seed)
    log = random_log(rng)
    clock = Clock()
    incremental = fold_at(clock, *log)
    refolded = fold_at(clock, *log)
    refolded.refold()
    assert snapshot(incremental, clock) == snapshot(refolded, clock), log


def test_the_fold_is_the_same_for_every_reader_whenever_it_looks() -> None:
    # a reader folding record by record (looking up after each) ends where one folding all at once does
    rng = random.Random(7)
    for _ in range(50):
        log = random_log(rng)
        clock = Clock()
        eager = Registry(clock=clock)
        for offset, (key, value) in enumerate(log):
            eager.apply(offset, key, value)
            eager.teams()
        assert snapshot(eager, clock) == snapshot(fold_at(clock, *log), clock)


# ---------------------------------------------------------------------------------------------------------------------
# what a writer appends to end a key, and finding a team by id or name
# ---------------------------------------------------------------------------------------------------------------------


def _state_of(record: tuple[str, bytes] | None) -> tuple[float | None, bool] | None:
    if record is None:
        return None
    obj = ujson.loads(record[1])
    assert record[0] == f"key_state:{obj['api_key']}"
    return obj["valid_until"], obj["revoked"]


@pytest.mark.parametrize(
    ("key", "grace", "expected"),
    [
        (Key(K1, 1, ""), 0, (None, True)),
        (Key(K1, 1, ""), 60, (T0 + 60, False)),
        (Key(K1, 1, "", valid_until=T0 + 3600), 60, (T0 + 60, False)),  # a grace shortens
        (Key(K1, 1, "", valid_until=T0 + 30), 60, None),  # but never extends
        (Key(K1, 1, "", valid_until=T0 + 30), 0, (None, True)),
        (Key(K1, 1, "", revoked=True), 0, None),  # a revoked key stays as it is
        (Key(K1, 1, "", valid_until=T0 - 1), 60, None),  # and so does one past its grace
    ],
)
def test_ending_a_key(key: Key, grace: float, expected: tuple[float | None, bool] | None) -> None:
    assert _state_of(ending(key, grace, T0, "at")) == expected


def test_find_a_team_by_id_or_unique_name() -> None:
    reg = fold_at(Clock(), new_claim(1, K1, "web"), new_claim(2, K2, "app"), new_claim(3, K3, "app"))
    assert reg.find("1").name == "web" and reg.find("web").team_id == 1 and reg.find("3").team_id == 3
    with pytest.raises(TeamError, match=r"2 teams are named 'app' \(team ids 2, 3\)"):
        reg.find("app")
    with pytest.raises(TeamError, match="no team 'nope'"):
        reg.find("nope")
    with pytest.raises(TeamError, match="no team '9'"):
        reg.find("9")


def test_a_name_made_of_digits_is_found_when_no_team_has_that_id() -> None:
    reg = fold_at(Clock(), new_claim(1, K1, "2024"), new_claim(2, K2, "1"))
    assert reg.find("2024").team_id == 1
    assert reg.find("1").team_id == 1  # an id wins over a name
