"""processors/priority.py: a slice of historical events waits for live ones, within bounds."""

from __future__ import annotations

from processors.priority import MAX_WAIT_S, defer, live_behind


def test_a_slice_waits_while_live_events_wait() -> None:
    assert defer(live_waiting=True, flow_stopped=False, waited_s=0.0)
    assert not defer(live_waiting=False, flow_stopped=False, waited_s=0.0)


def test_a_slice_never_waits_long_nor_while_faust_waits_for_it() -> None:
    assert not defer(live_waiting=True, flow_stopped=False, waited_s=MAX_WAIT_S)
    assert not defer(live_waiting=True, flow_stopped=True, waited_s=0.0)  # a rebalance waits for taken messages


def test_a_live_partition_is_behind_when_its_end_is_past_the_next_offset_taken() -> None:
    ends = {"raw-0": 10, "inbox-0": 3, "raw-1": None}
    nxt = {"raw-0": 10, "inbox-0": 3, "raw-1": 4}
    assert not live_behind(ends, ends.get, nxt.get)
    nxt["inbox-0"] = 2
    assert live_behind(ends, ends.get, nxt.get)
    assert not live_behind(["unknown"], ends.get, nxt.get)


def test_the_history_buffer_never_fills_with_what_faust_delivers_after_stopping_the_fetch() -> None:
    from processors.app import MAX_POLL_RECORDS, history_buffer

    for partitions in (1, 4, 12, 64):
        size = history_buffer(partitions)
        # Faust stops fetching at maxsize / 1.25; one more fetch per partition may still be delivered.
        assert size - size / 1.25 >= partitions * MAX_POLL_RECORDS
