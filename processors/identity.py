"""PostHog's identity rules that every part of the processors shares: which distinct ids may never be
merged, and the deterministic ids of persons (docs/identity.md). The protocol that applies them is
processors/protocol.py.
"""
from __future__ import annotations

import functools
import uuid
from typing import Any

# PostHog refuses to merge with these ids (either side); the event is still ingested.
ILLEGAL_IDS_CASE_INSENSITIVE = frozenset(
    {
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
    }
)
ILLEGAL_IDS_CASE_SENSITIVE = frozenset({"[object Object]", "NaN", "None", "none", "null", "0", "undefined"})
MAX_GROUP_TYPES = 5
MAX_GROUP_KEY = 400
PERSONLESS_NAMESPACE = uuid.UUID("932979b4-65c3-4424-8467-0b66ec27bc22")
PERSON_NAMESPACE = uuid.UUID("5d1c3b8e-2f47-4a8e-9b0e-6f3c2a1d7e55")


def _listed(text: str) -> bool:
    return text.lower() in ILLEGAL_IDS_CASE_INSENSITIVE or text in ILLEGAL_IDS_CASE_SENSITIVE


def is_illegal_id(distinct_id: object) -> bool:
    """PostHog's refusal list, matched exactly (no trimming), plus its single/double-quoted forms."""
    if not isinstance(distinct_id, str) or not distinct_id.strip():
        return True
    if _listed(distinct_id):
        return True
    quoted = len(distinct_id) >= 2 and distinct_id[0] == distinct_id[-1] and distinct_id[0] in "'\""
    return quoted and _listed(distinct_id[1:-1])


@functools.lru_cache(maxsize=65_536)  # asked for on every event of an id without a merge pointer
def new_person_id(team_id: int, distinct_id: str) -> str:
    """The id of the person created for ``distinct_id`` (its first id): the same on every replay.

    A restored state may lack a person whose row already reached ClickHouse (a crash after the row was
    sent, before the changelog write); replaying the event must create *that* person again, not a
    second one (a random id left an orphan live person in ClickHouse: 154 persons for 150 users in
    the kill test). An id gets a new person only while it has none, so the id is never reused.
    """
    return str(uuid.uuid5(PERSON_NAMESPACE, f"{team_id}:{distinct_id}"))


def personless_id(team_id: int, distinct_id: str) -> str:
    """Stable person id for events sent with ``$process_person_profile: false`` (no person is stored)."""
    return str(uuid.uuid5(PERSONLESS_NAMESPACE, f"{team_id}:{distinct_id}"))


def distinct_id_row(team_id: int, distinct_id: str, person_id: str, version: int) -> dict[str, Any]:
    return {"team_id": team_id, "distinct_id": distinct_id, "person_id": person_id, "is_deleted": 0, "version": version}
