"""The team registry as data: records, api keys, and how a log of records folds into a registry.

The registry lives in a compacted Kafka topic with one partition (a total order; see
:class:`eventpipe.kafka.RegistryReader`). Compaction keeps only the latest record of each Kafka key,
so the records are keyed such that the latest record of every key is all the fold needs:

=====================================  ==================================================================
Kafka key                              value (JSON)
=====================================  ==================================================================
``team:<team_id>:<nonce>``             ``{"type": "team", team_id, name, api_key, created_at}``: claims a
                                       team id together with its first key. Written once, never again.
``key:<team_id>:<nonce>``              ``{"type": "key", team_id, api_key, created_at}``: one more key of
                                       an existing team (``teams rotate-key``). Written once.
``key_state:<api_key>``                ``{"type": "key_state", api_key, team_id, valid_until, revoked,
                                       at}``: the key's end, latest wins (``rotate-key``'s grace,
                                       ``revoke-key``). ``valid_until`` is a Unix time or null.
``name:<team_id>``                     ``{"type": "name", team_id, name}``: the team's name, latest wins.
``<api_key>`` (records of before)      a :class:`Team` without ``type``: what ``teams create`` wrote
                                       before keys could rotate, folded as a team claim as before.
=====================================  ==================================================================

The rules, the same for every reader:

* **The lowest offset owns a team id**: a claim wins when its team id is not owned yet and its key
  is held by no team; a later claim of the id (a ``teams create`` race) or of a held key (two
  ``create --api-key`` with one key) loses, whatever comes after. Its writer sees that, withdraws the
  claim with a tombstone and retries with the next id (or reports the key as taken).
* **A key belongs to the first record that names it**: a ``key`` record wins when its team is owned
  and the key is held by no team. A key is never given to another team, even revoked.
* Claims carry a random nonce in their Kafka key, so two writers never share one: compaction can't
  replace a winning claim with a losing one, and a claim is never rewritten, so its offset — the
  one that decided ownership — survives compaction. Only the latest ``key_state`` and ``name`` per key
  or team matter, which is exactly what compaction keeps. Folding the compacted topic therefore gives
  the registry that folding the whole log gives.
* Whether a key is valid is decided **at lookup time** by the reader's clock (``valid_until``): a key
  whose grace has ended is refused without any new record.

Records of before (a :class:`Team` keyed by its api key) fold as they did: the first offset of a Kafka
key is its claim's offset even when the key was rewritten later (an update of the owner keeps
ownership; ``revoked`` makes its key unusable). No code ever rewrote them; a rewritten one is the one
case compaction can change (its first offset is then lost). Readers of before skip the new ``key``,
``key_state`` and ``name`` records (they don't parse as a Team) and read ``team`` claims as they read
their own records, so a new team reaches them during an upgrade; rotations don't.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import ujson

API_KEY_PREFIX = "phc_"
PERSONAL_KEY_PREFIX = "phx_"  # PostHog's personal (secret) api keys: never a project key
_API_KEY_SHAPE = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces, at most 64 chars
# A project key given to `teams create --api-key`: PostHog's shape (phc_ and url-safe characters, 43 of
# them in the keys PostHog mints), at least 20 after the prefix so a kept key is not guessable; or a
# project key from before PostHog added the prefix (a bare token_urlsafe(32), 43 chars): 32 to 64 of them.
_PROJECT_KEY_SHAPE = re.compile(r"phc_[A-Za-z0-9_-]{20,60}|[A-Za-z0-9_-]{32,64}")


class TeamError(ValueError):
    """A registry change refused (a key of the wrong shape or held already, an unknown team or key)."""


def new_api_key() -> str:
    # 32 random bytes -> 43 url-safe chars; with the prefix 47 chars, inside PostHog's 64-char bound.
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_shape_error(key: object) -> str | None:
    """Why ``key`` can't be an api key on capture (None when its shape is fine)."""
    if not isinstance(key, str) or not key:
        return "missing_api_key"
    if not _API_KEY_SHAPE.fullmatch(key):
        return "invalid_api_key"
    if key.startswith(PERSONAL_KEY_PREFIX):
        return "personal_api_key"  # PostHog's capture refuses them by shape too
    return None


# PostHog's secrets (personal, project secret, OAuth access and refresh keys): never given to SDKs.
_SECRET_PREFIXES = {PERSONAL_KEY_PREFIX: "a personal api key", "phs_": "a secret api key", "pha_": "an OAuth token"}
_SECRET_PREFIXES["phr_"] = _SECRET_PREFIXES["pha_"]


def project_key_error(key: str) -> str | None:
    """Why ``key`` can't be kept as a team's project api key (None when it can), in words for the CLI."""
    if (what := _SECRET_PREFIXES.get(key[:4])) is not None:
        return (
            f"that is {what} ({key[:4]}…), a secret for PostHog's private API; "
            "give the project api key (phc_…) the SDKs send"
        )
    if not _PROJECT_KEY_SHAPE.fullmatch(key):
        return (
            "a project api key is phc_ followed by 20 to 60 letters, digits, '-' or '_' "
            "(or, from before PostHog's phc_ prefix, 32 to 64 of them)"
        )
    return None


MAX_NAME_CHARS = 200  # PostHog's bound on a project's name


def team_name_error(name: str) -> str | None:
    """Why ``name`` can't name a team (None when it can)."""
    if not name.strip():
        return "a team name can't be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a team name has at most {MAX_NAME_CHARS} characters"
    return None


@dataclass(frozen=True, slots=True)
class Team:
    """A team as ``teams create`` returns it; also the record format of before (keyed by api key)."""

    team_id: int
    name: str
    api_key: str
    created_at: str
    revoked: bool = False

    def to_json(self) -> bytes:
        return ujson.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Team:
        obj: dict[str, Any] = ujson.loads(raw)
        return cls(
            team_id=int(obj["team_id"]),
            name=str(obj["name"]),
            api_key=str(obj["api_key"]),
            created_at=str(obj["created_at"]),
            revoked=bool(obj.get("revoked", False)),
        )


def format_unix(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Key:
    """One api key of a team and its end: ``revoked`` (now), or ``valid_until`` (a Unix time), or none."""

    api_key: str
    team_id: int
    created_at: str
    valid_until: float | None = None
    revoked: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and (self.valid_until is None or now < self.valid_until)

    def state(self, now: float) -> str:
        """``active``, ``valid until <UTC time>`` (a grace), or ``revoked`` (at once or its grace over)."""
        if not self.valid(now):
            return "revoked"
        return "active" if self.valid_until is None else f"valid until {format_unix(self.valid_until)}"

    def as_json(self, now: float) -> dict[str, Any]:
        until = None if self.valid_until is None else format_unix(self.valid_until)
        state = self.state(now).split(" ", 1)[0]  # active | valid | revoked
        return {"api_key": self.api_key, "state": state, "valid_until": until, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class TeamInfo:
    """A team as the registry folds it: its current name and every key it ever held, oldest first."""

    team_id: int
    name: str
    created_at: str
    keys: tuple[Key, ...]

    def valid_keys(self, now: float) -> list[Key]:
        return [k for k in self.keys if k.valid(now)]

    def main_key(self, now: float) -> Key:
        """The key to give out: the newest without an end, else the newest valid one, else the newest."""
        valid = self.valid_keys(now)
        endless = [k for k in valid if k.valid_until is None]
        return (endless or valid or list(self.keys))[-1]

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "name": self.name,
            "api_key": self.main_key(now).api_key,
            "revoked": not self.valid_keys(now),
            "created_at": self.created_at,
            "keys": [k.as_json(now) for k in self.keys],
        }


# ---------------------------------------------------------------------------------------------------------------------
# records (Kafka key, value) a writer appends
# ---------------------------------------------------------------------------------------------------------------------

Record = tuple[str, bytes]


def _dumps(obj: dict[str, Any]) -> bytes:
    return ujson.dumps(obj, ensure_ascii=False).encode()


def claim_record(team_id: int, name: str, api_key: str, created_at: str) -> Record:
    value = {"type": "team", "team_id": team_id, "name": name, "api_key": api_key, "created_at": created_at}
    return f"team:{team_id}:{secrets.token_hex(8)}", _dumps(value)


def key_record(team_id: int, api_key: str, created_at: str) -> Record:
    value = {"type": "key", "team_id": team_id, "api_key": api_key, "created_at": created_at}
    return f"key:{team_id}:{secrets.token_hex(8)}", _dumps(value)


def key_state_record(key: Key, valid_until: float | None, revoked: bool, at: str) -> Record:
    value = {
        "type": "key_state",
        "api_key": key.api_key,
        "team_id": key.team_id,
        "valid_until": valid_until,
        "revoked": revoked,
        "at": at,
    }
    return f"key_state:{key.api_key}", _dumps(value)


def name_record(team_id: int, name: str) -> Record:
    return f"name:{team_id}", _dumps({"type": "name", "team_id": team_id, "name": name})


def ending(key: Key, grace_s: float, now: float, at: str) -> Record | None:
    """The record that ends ``key`` after ``grace_s`` seconds (0: revoked at once); None when the key
    ends as soon already (a revocation never extends a key, nor gives a revoked one back)."""
    if not key.valid(now):
        return None
    if grace_s <= 0:
        return key_state_record(key, None, True, at)
    until = now + grace_s
    if key.valid_until is not None and key.valid_until <= until:
        return None
    return key_state_record(key, until, False, at)


# ---------------------------------------------------------------------------------------------------------------------
# the fold
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Claim:
    """A parsed record that introduces a key: a team claim (``name`` set) or a key of a team."""

    team_id: int
    api_key: str
    created_at: str
    name: str | None = None  # set: a claim of the team id
    revoked: bool = False  # records of before carry it


@dataclass(slots=True)
class _State:
    api_key: str
    valid_until: float | None
    revoked: bool


@dataclass(slots=True)
class _Name:
    team_id: int
    name: str


def _parse(value: bytes) -> _Claim | _State | _Name:
    obj = ujson.loads(value)
    if not isinstance(obj, dict):
        raise TypeError("not an object")
    kind = obj.get("type")
    if kind is None:  # a record of before
        t = Team.from_json(value)
        return _Claim(t.team_id, t.api_key, t.created_at, t.name, t.revoked)
    if kind == "team":
        return _Claim(int(obj["team_id"]), str(obj["api_key"]), str(obj["created_at"]), str(obj["name"]))
    if kind == "key":
        return _Claim(int(obj["team_id"]), str(obj["api_key"]), str(obj["created_at"]))
    if kind == "key_state":
        until = obj.get("valid_until")
        valid_until = None if until is None else float(until)
        if valid_until is not None and not math.isfinite(valid_until):
            raise ValueError("valid_until not finite")
        return _State(str(obj["api_key"]), valid_until, bool(obj.get("revoked", False)))
    if kind == "name":
        return _Name(int(obj["team_id"]), str(obj["name"]))
    raise ValueError(f"unknown record type {kind!r}")


_Parsed = _Claim | _State | _Name


@dataclass(slots=True)
class _Stored:
    first: int  # the offset the Kafka key was first seen at (since its last tombstone): a claim's order
    last: int  # the offset of this, its latest record: "latest wins" for key states and names
    record: _Parsed


class Registry:
    """In-memory fold of the registry topic. Feed it records in offset order with :meth:`apply`.

    It keeps the latest record of each Kafka key (what compaction keeps). A record that extends the log
    (a new claim, a key's state, a name) is folded in as it arrives; the rare ones that change the past
    (the tombstone of a winning claim, a record of before rewritten) make it fold every record again on
    the next lookup. Lookups are dict reads. ``clock``: the Unix time keys are judged by (tests inject it).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._records: dict[str, _Stored] = {}
        self._refold_needed = False
        self._reset()

    def _reset(self) -> None:
        self._live: dict[str, tuple[int, float | None]] = {}  # usable key -> (team id, valid until)
        self._keys: dict[str, Key] = {}  # every held key, revoked ones too
        self._claims: dict[str, _Claim] = {}  # held key -> the record that gave it (its state's base)
        self._accepted: set[str] = set()  # Kafka keys of the claims that won
        self._teams: dict[int, tuple[str, str, list[str]]] = {}  # owned id -> (name, created_at, keys)
        self._states: dict[str, tuple[int, _State]] = {}  # api key -> its latest state (offset, state)
        self._names: dict[int, tuple[int, str]] = {}  # team id -> its latest name (offset, name)

    def apply(self, offset: int, key: str, value: bytes | None) -> None:
        old = self._records.get(key)
        if value is None:  # tombstone: a loser of a race withdrawing its claim
            if old is not None:
                del self._records[key]
                # A lost claim held nothing: forgetting it changes nothing. Anything else is refolded.
                self._refold_needed |= not (isinstance(old.record, _Claim) and key not in self._accepted)
            return
        try:
            record = _parse(value)
        except (ValueError, KeyError, TypeError, OverflowError):
            return  # a malformed record is skipped, never fatal for the readers
        self._records[key] = _Stored(offset if old is None else old.first, offset, record)
        if old is not None and (isinstance(old.record, _Claim) or isinstance(record, _Claim)):
            self._refold_needed = True  # a claim rewritten in place (records of before): its past changes
        elif not self._refold_needed:
            self._fold_in(key, record, offset)

    def _fold_in(self, kafka_key: str, record: _Parsed, offset: int) -> None:
        """One record, the latest so far (a claim: the latest first offset), into the folded state."""
        if isinstance(record, _Claim):
            self._claim(kafka_key, record)
        elif isinstance(record, _State):
            if offset >= self._states.get(record.api_key, (-1, None))[0]:
                self._states[record.api_key] = (offset, record)
                self._set_key(record.api_key)
        elif offset >= self._names.get(record.team_id, (-1, ""))[0]:
            self._names[record.team_id] = (offset, record.name)
            if record.team_id in self._teams:
                _, created, keys = self._teams[record.team_id]
                self._teams[record.team_id] = (record.name, created, keys)

    def _claim(self, kafka_key: str, claim: _Claim) -> None:
        """The module's rules: a team claim wins an unowned id, a key record needs an owned one, and
        either needs a key no team holds."""
        if claim.api_key in self._keys or (claim.name is not None) == (claim.team_id in self._teams):
            return
        if claim.name is not None:
            name = self._names[claim.team_id][1] if claim.team_id in self._names else claim.name
            self._teams[claim.team_id] = (name, claim.created_at, [])
        self._teams[claim.team_id][2].append(claim.api_key)
        self._claims[claim.api_key] = claim
        self._accepted.add(kafka_key)
        self._set_key(claim.api_key)

    def _set_key(self, api_key: str) -> None:
        """A held key as its claim and its latest state make it."""
        claim = self._claims.get(api_key)
        if claim is None:
            return  # a state of a key no team holds (yet)
        state = self._states.get(api_key)
        until, revoked = (None, claim.revoked) if state is None else (state[1].valid_until, state[1].revoked)
        self._keys[api_key] = Key(api_key, claim.team_id, claim.created_at, until, revoked)
        if revoked:
            self._live.pop(api_key, None)
        else:
            self._live[api_key] = (claim.team_id, until)

    def _refolded(self) -> None:
        """Fold every surviving record again: states and names first (latest wins), then the claims in
        the order of their first offsets."""
        self._refold_needed = False
        self._reset()
        stored = sorted(self._records.items(), key=lambda item: item[1].first)
        for kafka_key, s in stored:
            if not isinstance(s.record, _Claim):
                self._fold_in(kafka_key, s.record, s.last)
        for kafka_key, s in stored:
            if isinstance(s.record, _Claim):
                self._claim(kafka_key, s.record)

    def team_id(self, api_key: str) -> int | None:
        """The team of a valid key, None for a key no team holds or one revoked or past its grace."""
        if self._refold_needed:
            self._refolded()
        live = self._live.get(api_key)
        if live is None:
            return None
        if live[1] is not None and self.clock() >= live[1]:
            return None
        return live[0]

    def _view(self) -> Registry:
        if self._refold_needed:
            self._refolded()
        return self

    def holds(self, api_key: str) -> bool:
        """Whether some team holds ``api_key`` (revoked keys included): it can't be given to another."""
        return api_key in self._view()._keys

    def key(self, api_key: str) -> Key | None:
        return self._view()._keys.get(api_key)

    def accepted(self, kafka_key: str) -> bool:
        """Whether the claim written under ``kafka_key`` won (see the module's rules)."""
        return kafka_key in self._view()._accepted

    def key_of(self, kafka_key: str) -> Key | None:
        """The key a claim written under ``kafka_key`` introduced, when it won."""
        stored = self._records.get(kafka_key)
        if not self.accepted(kafka_key) or stored is None or not isinstance(stored.record, _Claim):
            return None
        return self._keys.get(stored.record.api_key)

    def owns(self, team: Team) -> bool:
        """Whether ``team``'s key is valid and belongs to ``team.team_id``."""
        return self.team_id(team.api_key) == team.team_id

    def team(self, team_id: int) -> TeamInfo | None:
        found = self._view()._teams.get(team_id)
        if found is None:
            return None
        name, created, keys = found
        return TeamInfo(team_id, name, created, tuple(self._keys[k] for k in keys))

    def teams(self) -> list[TeamInfo]:
        return [t for team_id in sorted(self._view()._teams) if (t := self.team(team_id)) is not None]

    def find(self, ref: str) -> TeamInfo:
        """The team ``ref`` names: a team id, else a (unique) name; TeamError otherwise."""
        if ref.isdigit() and (team := self.team(int(ref))) is not None:
            return team
        named = [t for t in self.teams() if t.name == ref]
        if len(named) == 1:
            return named[0]
        if named:
            ids = ", ".join(str(t.team_id) for t in named)
            raise TeamError(f"{len(named)} teams are named {ref!r} (team ids {ids}): give the team id")
        raise TeamError(f"no team {ref!r} (neither a team id nor a name; see `eventpipe teams list`)")

    def next_team_id(self) -> int:
        return max(self._view()._teams, default=0) + 1

    def __len__(self) -> int:
        """The number of keys teams hold."""
        return len(self._view()._keys)

    def refold(self) -> None:
        """Fold every record again from scratch (what :meth:`apply` falls back to; tests compare)."""
        self._refold_needed = True
        self._view()
