"""The team registry as data: records, api keys, and how a log of records folds into a registry.

The registry lives in a compacted Kafka topic (see :mod:`eventpipe.registry`). Records are keyed by
api key, so compaction keeps every team. Two ``teams create`` racing for the same team id both
write; the rule that makes the outcome deterministic for every reader is *the record with the lowest
offset owns a team id*; later claims of it are ignored (and their writer retries with a new id).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import ujson

API_KEY_PREFIX = "phc_"
PERSONAL_KEY_PREFIX = "phx_"  # PostHog's personal (secret) api keys: never a project key
_API_KEY_SHAPE = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces, at most 64 chars
# A project key given to `teams create --api-key`: PostHog's shape (phc_ and url-safe characters, 43 of
# them in the keys PostHog mints), at least 20 after the prefix so a kept key is not guessable.
_PROJECT_KEY_SHAPE = re.compile(r"phc_[A-Za-z0-9_-]{20,60}")


def new_api_key() -> str:
    # 32 random bytes -> 43 url-safe chars; with the prefix 47 chars, inside PostHog's 64-char bound.
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_shape_error(key: object) -> str | None:
    """Why ``key`` can't be an api key (None when its shape is fine)."""
    if not isinstance(key, str) or not key:
        return "missing_api_key"
    if not _API_KEY_SHAPE.fullmatch(key):
        return "invalid_api_key"
    return None


def project_key_error(key: str) -> str | None:
    """Why ``key`` can't be kept as a team's project api key (None when it can), in words for the CLI."""
    if key.startswith(PERSONAL_KEY_PREFIX):
        return (
            "that is a personal api key (phx_…), a secret for PostHog's private API; "
            "give the project api key (phc_…) the SDKs send"
        )
    if not _PROJECT_KEY_SHAPE.fullmatch(key):
        return "a project api key is phc_ followed by 20 to 60 letters, digits, '-' or '_'"
    return None


@dataclass(frozen=True, slots=True)
class Team:
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


class Registry:
    """In-memory fold of the registry topic. Feed it records in offset order with :meth:`apply`."""

    def __init__(self) -> None:
        self._by_key: dict[str, Team] = {}
        self._owner_offset: dict[int, tuple[int, str]] = {}  # team_id -> (offset, api_key) of its owner

    def apply(self, offset: int, key: str, value: bytes | None) -> None:
        if value is None:  # tombstone: a loser of a team-id race withdrawing its claim
            self._by_key.pop(key, None)
            return
        try:
            team = Team.from_json(value)
        except (ValueError, KeyError, TypeError):
            return  # a malformed record is skipped, never fatal for the readers
        owner = self._owner_offset.get(team.team_id)
        if owner is not None and owner[1] != team.api_key and owner[0] < offset:
            return  # an earlier record owns this team id
        self._owner_offset[team.team_id] = (offset, team.api_key)
        self._by_key[team.api_key] = team

    def team_id(self, api_key: str) -> int | None:
        team = self._by_key.get(api_key)
        if team is None or team.revoked:
            return None
        owner = self._owner_offset.get(team.team_id)
        return team.team_id if owner is not None and owner[1] == api_key else None

    def holds(self, api_key: str) -> bool:
        """Whether some team holds ``api_key`` (revoked keys included): it can't be given to another."""
        return api_key in self._by_key

    def owns(self, team: Team) -> bool:
        return self.team_id(team.api_key) == team.team_id

    def next_team_id(self) -> int:
        return max(self._owner_offset, default=0) + 1

    def teams(self) -> list[Team]:
        return sorted((t for t in self._by_key.values() if self.owns(t) or t.revoked), key=lambda t: t.team_id)

    def __len__(self) -> int:
        return len(self._by_key)
