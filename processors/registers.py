"""Person and group properties as per-key registers that merge the same whatever the order.

A person's events reach its home partition from several distinct ids' partitions, and a merge joins
two persons' properties that were built on different partitions, so the order in which updates are
applied is not the order the user produced them. Each key therefore keeps the stamps of the updates
that decide it, and the value is a function of the *set* of updates seen:

* ``$set`` / ``$unset`` — the update with the greatest stamp ``(timestamp, uuid, rank)`` wins (an
  ``$unset`` is a tombstone competing with ``$set``; within one event ``$unset`` ranks after ``$set``, as
  PostHog applies them);
* ``$set_once`` — the one with the smallest stamp wins, and it counts only while the key has never been
  ``$set`` or ``$unset`` (a ``$set_once`` after an ``$unset`` does not bring the key back: that would
  need every later ``$set_once`` kept to stay order-free).

Applying an update twice changes nothing, and joining two registers is commutative and associative,
so replays after a crash and merges in any order converge (tests/test_unit_registers.py).

A register is stored JSON-ready: ``{"w": [ts, uuid, rank, value] | None, "o": [ts, uuid, value] | None}``
(rank 1: ``$set``, 2: ``$unset``).
"""

from __future__ import annotations

from typing import Any

Register = dict[str, Any]
Registers = dict[str, Register]
Stamp = tuple[str, str]
SET, UNSET = 1, 2


def _later(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if (b[0], b[1], b[2]) > (a[0], a[1], a[2]) else a


def _earlier(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if (b[0], b[1]) < (a[0], a[1]) else a


def join_register(a: Register | None, b: Register | None) -> Register:
    a = a or {"w": None, "o": None}
    b = b or {"w": None, "o": None}
    return {"w": _later(a["w"], b["w"]), "o": _earlier(a["o"], b["o"])}


def join(a: Registers, b: Registers) -> Registers:
    """The registers of two persons (or one person's two partial views) as one."""
    out = dict(a)
    for key, reg in b.items():
        out[key] = join_register(a.get(key), reg)
    return out


def apply_updates(
    regs: Registers, stamp: Stamp, set_: Any = None, set_once: Any = None, unset: Any = None
) -> tuple[Registers, bool]:
    """``regs`` with one event's ``$set`` / ``$set_once`` / ``$unset`` applied; True when anything changed."""
    ts, uuid = stamp
    updates: Registers = {}
    if isinstance(set_once, dict):
        for k, v in set_once.items():
            updates[str(k)] = {"w": None, "o": [ts, uuid, v]}
    if isinstance(set_, dict):
        for k, v in set_.items():
            updates[str(k)] = join_register(updates.get(str(k)), {"w": [ts, uuid, SET, v], "o": None})
    if isinstance(unset, dict):
        unset = list(unset)
    if isinstance(unset, list):
        for k in unset:
            if isinstance(k, str):
                updates[k] = join_register(updates.get(k), {"w": [ts, uuid, UNSET, None], "o": None})
    if not updates:
        return regs, False
    merged = join(regs, updates)
    changed = any(merged.get(k) != regs.get(k) for k in updates)
    return (merged if changed else regs), changed


def value_of(reg: Register) -> tuple[bool, Any]:
    """(present, value) of one register."""
    if reg["w"] is not None:
        return (True, reg["w"][3]) if reg["w"][2] == SET else (False, None)
    if reg["o"] is not None:
        return True, reg["o"][2]
    return False, None


def materialize(regs: Registers) -> dict[str, Any]:
    """The plain properties a person row and an event row carry."""
    out: dict[str, Any] = {}
    for key in sorted(regs):
        present, value = value_of(regs[key])
        if present:
            out[key] = value
    return out


def set_only(regs: Registers, stamp: Stamp, values: Any) -> tuple[Registers, bool]:
    """Group properties: ``$group_set`` is a ``$set`` with the event's stamp."""
    return apply_updates(regs, stamp, set_=values)
