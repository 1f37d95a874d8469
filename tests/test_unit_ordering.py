"""processors/ordering.py: a partition's messages are admitted in offset order only."""

from __future__ import annotations

from processors.ordering import Admit, InOrder


def test_consecutive_offsets_are_taken() -> None:
    order = InOrder()
    assert [order.admit("p", o, committed=10) for o in (10, 11, 12)] == [Admit.TAKE] * 3
    assert order.resume_at("p", None) == 13


def test_a_hole_holds_everything_after_it_until_it_is_read() -> None:
    order = InOrder()
    assert order.admit("p", 10, committed=10) is Admit.TAKE
    assert order.admit("p", 14, committed=10) is Admit.GAP  # 11..13 were dropped
    assert order.admit("p", 15, committed=10) is Admit.GAP
    assert order.resume_at("p", 10) == 11
    # the seek back re-reads from 11, in order
    assert [order.admit("p", o, committed=10) for o in (11, 12, 13, 14, 15)] == [Admit.TAKE] * 5


def test_a_hole_right_after_the_assignment_is_seen_from_the_committed_offset() -> None:
    order = InOrder()
    assert order.admit("p", 7, committed=5) is Admit.GAP
    assert order.resume_at("p", 5) == 5


def test_re_read_offsets_are_skipped() -> None:
    order = InOrder()
    for o in range(5):
        order.admit("p", o, committed=0)
    assert order.admit("p", 2, committed=0) is Admit.SEEN
    assert order.admit("p", 5, committed=0) is Admit.TAKE


def test_partitions_are_independent_and_a_rebalance_forgets() -> None:
    order = InOrder()
    order.admit("a", 0, committed=0)
    assert order.admit("b", 9, committed=None) is Admit.TAKE  # nothing known: take what comes
    order.reset()
    assert order.admit("a", 3, committed=3) is Admit.TAKE


def test_a_hole_is_sought_once_the_partition_is_quiet_then_again_until_read() -> None:
    order = InOrder()
    order.admit("p", 10, committed=10, now=0.0)
    assert order.admit("p", 14, committed=10, now=0.0) is Admit.GAP
    assert order.due_seeks(now=0.5) == []  # stale messages may still be arriving
    assert order.admit("p", 15, committed=10, now=0.8) is Admit.GAP
    assert order.due_seeks(now=1.5) == []
    assert order.due_seeks(now=2.0) == [("p", 11)]
    assert order.due_seeks(now=3.0) == []
    assert order.due_seeks(now=5.1) == [("p", 11)]  # not read yet: once more
    order.admit("p", 11, committed=10, now=5.5)
    assert order.due_seeks(now=20.0) == []
