"""Pure unit tests of gateway/uuid7.py."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway.uuid7 import uuid7


def ms_of(u: uuid.UUID) -> int:
    return u.int >> 80


@pytest.mark.parametrize("ms", [0, 1, 1_597_568_591_913, 1_700_000_000_000, 2**48 - 1])
def test_layout(ms: int) -> None:
    u = uuid7(ms)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert ms_of(u) == ms
    assert str(u)[14] == "7"
    assert str(u)[19] in "89ab"


def test_timestamp_wraps_to_48_bits() -> None:
    assert ms_of(uuid7(2**48 + 5)) == 5
    assert uuid7(2**48 + 5).version == 7


def test_default_uses_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= ms_of(u) <= after
    assert u.version == 7


def test_random_bits_differ() -> None:
    ids = {uuid7(1_700_000_000_000) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)


@pytest.mark.parametrize("step", [1, 2, 1000, 86_400_000])
def test_ordered_across_milliseconds(step: int) -> None:
    base = 1_700_000_000_000
    ids = [uuid7(base + i * step) for i in range(200)]
    assert ids == sorted(ids)
    assert [str(u) for u in ids] == sorted(str(u) for u in ids)  # the text form sorts the same way
    assert [u.bytes for u in ids] == sorted(u.bytes for u in ids)


def test_ordered_in_real_time() -> None:
    first = uuid7()
    time.sleep(0.002)
    second = uuid7()
    assert first < second


@pytest.mark.parametrize("ms", [None, 0, 1_717_243_198_123, 2**48 - 1])
def test_derived_uuid_layout_and_determinism(ms: int | None) -> None:
    import hashlib

    from gateway.uuid7 import derived_uuid

    for seed in (b"a", b"b", b"\xff" * 8):
        digest = hashlib.blake2b(seed, digest_size=16).digest()
        text = derived_uuid(digest, ms)
        u = uuid.UUID(text)
        assert str(u) == text and derived_uuid(digest, ms) == text
        assert u.variant == uuid.RFC_4122
        assert u.version == (8 if ms is None else 7)
        if ms is not None:
            assert ms_of(u) == ms


def test_derived_uuid_clamps_times_out_of_range() -> None:
    from gateway.uuid7 import derived_uuid

    digest = bytes(range(16))
    assert ms_of(uuid.UUID(derived_uuid(digest, -5))) == 0
    assert ms_of(uuid.UUID(derived_uuid(digest, 2**50))) == 2**48 - 1
