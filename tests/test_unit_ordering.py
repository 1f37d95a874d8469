"""processors/ordering.py: a partition's messages are admitted in offset order only, from where it resumes."""

from __future__ import annotations

import pytest

from processors.ordering import Admit, InOrder, start_offsets


def test_consecutive_offsets_are_taken() -> None:
    order = InOrder()
    order.begin("p", 10)
    assert [order.admit("p", o) for o in (10, 11, 12)] == [Admit.TAKE] * 3
    assert order.resume_at("p") == 13


def test_a_hole_holds_everything_after_it_until_it_is_read() -> None:
    order = InOrder()
    order.begin("p", 10)
    assert order.admit("p", 10) is Admit.TAKE
    assert order.admit("p", 14) is Admit.GAP  # 11..13 were dropped
    assert order.admit("p", 15) is Admit.GAP
    assert order.resume_at("p") == 11
    # the seek back re-reads from 11, in order
    assert [order.admit("p", o) for o in (11, 12, 13, 14, 15)] == [Admit.TAKE] * 5


def test_a_hole_right_after_the_assignment_is_seen_from_where_the_partition_resumes() -> None:
    # The chaos (b) loss: the first message handed over after a restart was 500, the partition resumed at 89.
    order = InOrder()
    order.begin("p", 89)
    assert order.admit("p", 500) is Admit.GAP
    assert order.resume_at("p") == 89


def test_a_partition_whose_start_is_unknown_admits_nothing() -> None:
    order = InOrder()
    assert order.unknown(["a", "b"]) == {"a", "b"}
    with pytest.raises(KeyError):
        order.admit("a", 0)
    order.begin("a", 4)
    order.begin("a", 9)  # the first start told stands until a reset
    assert order.unknown(["a", "b"]) == {"b"}
    assert order.admit("a", 4) is Admit.TAKE


def test_re_read_offsets_are_skipped() -> None:
    order = InOrder()
    order.begin("p", 0)
    for o in range(5):
        order.admit("p", o)
    assert order.admit("p", 2) is Admit.SEEN
    assert order.admit("p", 5) is Admit.TAKE


def test_partitions_are_independent_and_a_rebalance_forgets() -> None:
    order = InOrder()
    order.begin("a", 0)
    order.begin("b", 9)
    order.admit("a", 0)
    assert order.admit("b", 9) is Admit.TAKE
    order.reset()
    assert order.unknown(["a", "b"]) == {"a", "b"}
    order.begin("a", 3)
    assert order.admit("a", 3) is Admit.TAKE


def test_a_hole_is_sought_once_the_partition_is_quiet_then_again_until_read() -> None:
    order = InOrder()
    order.begin("p", 10)
    order.admit("p", 10, now=0.0)
    assert order.admit("p", 14, now=0.0) is Admit.GAP
    assert order.due_seeks(now=0.5) == []  # stale messages may still be arriving
    assert order.admit("p", 15, now=0.8) is Admit.GAP
    assert order.due_seeks(now=1.5) == []
    assert order.due_seeks(now=2.0) == [("p", 11)]
    assert order.due_seeks(now=3.0) == []
    assert order.due_seeks(now=5.1) == [("p", 11)]  # not read yet: once more
    order.admit("p", 11, now=5.5)
    assert order.due_seeks(now=20.0) == []


def test_a_partition_resumes_at_its_committed_offset_or_its_log_start() -> None:
    starts = start_offsets({"committed": 40, "never": None, "deleted": 3}, {"committed": 0, "never": 12, "deleted": 8})
    # never committed: where auto_offset_reset=earliest reads; committed below the log start: retention
    # deleted 3..7, the consumer reads from 8, and a hole at 3 could never be read.
    assert starts == {"committed": 40, "never": 12, "deleted": 8}
    assert start_offsets({"fresh": None}, {}) == {"fresh": 0}
