"""PostHog's refusal list of distinct ids and the personless person id (processors/identity.py).

The merge rules themselves are tested against the reference model: tests/test_unit_identity_model.py
(by example) and tests/test_unit_protocol.py (the partitioned protocol, with crashes).
"""

from __future__ import annotations

import uuid

import pytest

from processors.identity import is_illegal_id, personless_id

CASE_INSENSITIVE = [
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
]
CASE_SENSITIVE = ["[object Object]", "NaN", "None", "none", "null", "0", "undefined"]


def _mixed(text: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))


def _quoted(text: str) -> list[str]:
    return [text, f"'{text}'", f'"{text}"']

ILLEGAL = sorted(
    {
        *(q for bare in CASE_INSENSITIVE for v in (bare, bare.upper(), bare.title(), _mixed(bare)) for q in _quoted(v)),
        *(q for bare in CASE_SENSITIVE for q in _quoted(bare)),
        "",
        " ",
        "   ",
        "\t",
        "\n",
        " \t\r\n ",
        "\u00a0",
    }
)
LEGAL = [
    # case-sensitive-only ids in another case are fine ...
    "nan",
    "NAN",
    "Nan",
    "nAN",
    "NONE",
    "nONE",
    "NULL",
    "Null",
    "[object object]",
    "[OBJECT OBJECT]",
    "'nan'",
    '"Null"',
    "'NONE'",
    # ... and so are ids that merely contain an illegal one
    "00",
    "0.0",
    "-0",
    "user-1",
    "anonymous-123",
    "guest1",
    "my_email",
    "email@example.com",
    "idx",
    "truth",
    "null-user",
    "\"'null'\"",
    "x",
]


@pytest.mark.parametrize("distinct_id", ILLEGAL)
def test_illegal_ids(distinct_id: str) -> None:
    assert is_illegal_id(distinct_id)


@pytest.mark.parametrize("distinct_id", LEGAL)
def test_legal_ids(distinct_id: str) -> None:
    assert not is_illegal_id(distinct_id)


@pytest.mark.parametrize(
    "distinct_id", [" null ", "null ", " anonymous", "\tNaN", "'anonymous' ", "'null", 'null"', "''null''", "'''0'''"]
)
def test_near_illegal_ids_are_legal(distinct_id: str) -> None:
    assert not is_illegal_id(distinct_id)


def test_non_string_ids_are_illegal() -> None:
    assert is_illegal_id(None)
    assert is_illegal_id(0)
    assert is_illegal_id({"a": 1})



def test_personless_id_is_deterministic_per_team_and_distinct_id() -> None:
    assert personless_id(1, "a") == personless_id(1, "a")
    assert len({personless_id(1, "a"), personless_id(2, "a"), personless_id(1, "b")}) == 3
    assert uuid.UUID(personless_id(1, "a")).version == 5

