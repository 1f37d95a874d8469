"""processors/priority.py: historical events wait for live ones, in a bounded backlog."""

from __future__ import annotations

import pytest

from processors.priority import Backlog, Flow, live_behind, may_drain


def test_the_backlog_hands_out_slices_oldest_first() -> None:
    backlog: Backlog[int] = Backlog(high=10, low=2, slice_size=3)
    backlog.add(range(7))
    assert [backlog.take(), backlog.take(), backlog.take(), backlog.take()] == [[0, 1, 2], [3, 4, 5], [6], []]


def test_the_historical_partitions_pause_at_high_and_resume_at_low() -> None:
    backlog: Backlog[int] = Backlog(high=6, low=2, slice_size=2)
    backlog.add(range(5))
    assert backlog.flow() is None
    backlog.add([5])
    assert backlog.flow() is Flow.PAUSE and backlog.paused
    assert backlog.flow() is None  # said once
    backlog.take()
    assert backlog.flow() is None  # 4 left: above low, still paused
    backlog.take()
    assert backlog.flow() is Flow.RESUME and not backlog.paused
    assert backlog.flow() is None


def test_after_a_rebalance_the_flow_is_decided_again() -> None:
    backlog: Backlog[int] = Backlog(high=6, low=2)
    backlog.reassigned()  # empty: whatever Faust kept paused is resumed
    assert backlog.flow() is Flow.RESUME
    backlog.add(range(6))
    backlog.reassigned()
    assert backlog.flow() is Flow.PAUSE


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ValueError):
        Backlog(high=2, low=2)


def test_live_events_first_unless_faust_waits_for_the_backlog() -> None:
    assert not may_drain(0, live_waiting=False, flow_stopped=False)
    assert may_drain(5, live_waiting=False, flow_stopped=False)
    assert not may_drain(5, live_waiting=True, flow_stopped=False)
    assert may_drain(5, live_waiting=True, flow_stopped=True)  # a rebalance waits for every taken message


def test_a_live_partition_is_behind_when_its_end_is_past_the_next_offset_taken() -> None:
    ends = {"raw-0": 10, "inbox-0": 3, "raw-1": None}
    nxt = {"raw-0": 10, "inbox-0": 3, "raw-1": 4}
    assert not live_behind(ends, ends.get, nxt.get)
    nxt["inbox-0"] = 2
    assert live_behind(ends, ends.get, nxt.get)
    assert not live_behind(["unknown"], ends.get, nxt.get)
