"""The processors' watchdog (processors/liveness.py): only a partition with unread messages and no
progress is stalled; it is resumed first, given up on only if it stays stalled."""

from __future__ import annotations

from processors.liveness import Liveness

TP = "raw-0"


def check(live: Liveness, now: float, end: int | None, position: int | None = 0, rebalancing: bool = False):
    return live.check(now, [TP], lambda _tp: end, lambda _tp: position, rebalancing)


def test_a_partition_that_keeps_taking_is_never_stalled() -> None:
    live = Liveness(stall_after_s=10)
    for t in range(100):
        live.taken(TP, t, now=float(t))
        verdict = check(live, float(t), end=t + 50)
        assert verdict.resume == verdict.give_up == []


def test_nothing_to_read_is_not_a_stall() -> None:
    live = Liveness(stall_after_s=10)
    live.taken(TP, 99, now=0.0)
    assert check(live, 1000.0, end=100).resume == []
    fresh = Liveness(stall_after_s=10)  # assigned, all committed, never took anything
    assert check(fresh, 0.0, end=100, position=100).resume == []
    assert check(fresh, 1000.0, end=100, position=100).resume == []


def test_unread_messages_without_progress_are_resumed_then_given_up() -> None:
    live = Liveness(stall_after_s=10)
    live.taken(TP, 5, now=0.0)
    assert check(live, 5.0, end=50).resume == []
    assert check(live, 11.0, end=50).resume == [TP]
    assert check(live, 15.0, end=50).give_up == []
    assert check(live, 22.0, end=50).give_up == [TP]


def test_progress_after_a_resume_clears_the_stall() -> None:
    live = Liveness(stall_after_s=10)
    live.taken(TP, 5, now=0.0)
    assert check(live, 11.0, end=50).resume == [TP]
    live.taken(TP, 6, now=12.0)
    verdict = check(live, 30.0, end=50)
    assert (verdict.resume, verdict.give_up) == ([TP], [])  # stalled again: a fresh resume, not a restart


def test_a_rebalance_restarts_the_clock() -> None:
    live = Liveness(stall_after_s=10)
    live.taken(TP, 5, now=0.0)
    assert check(live, 9.0, end=50, rebalancing=True).resume == []
    assert check(live, 15.0, end=50).resume == []
    assert check(live, 20.0, end=50).resume == [TP]


def test_revoked_partitions_are_forgotten() -> None:
    live = Liveness(stall_after_s=10)
    live.taken(TP, 5, now=0.0)
    live.check(1.0, [], lambda _tp: 50, lambda _tp: 0, False)
    assert live.progress == {}


def test_lag_is_the_end_minus_the_offset_after_the_last_taken() -> None:
    live = Liveness()
    live.taken("p0", 9, 0.0)
    live.check(1.0, ["p0", "p1", "p2"], lambda tp: {"p0": 15, "p1": 7}.get(tp), lambda tp: 4, False)
    # p0: 10..14 unread; p1: nothing taken yet, the consumer starts at 4; p2: no high watermark yet.
    assert live.lag(lambda tp: {"p0": 15, "p1": 7}.get(tp), lambda tp: 4) == {"p0": 5, "p1": 3}
    live.check(2.0, ["p1"], lambda tp: 7, lambda tp: 4, False)  # p0 revoked
    assert live.lag(lambda tp: 7, lambda tp: 4) == {"p1": 3}


def test_a_partition_being_fetched_is_not_stalled_while_its_messages_wait_in_the_stream() -> None:
    # A worker catching up on a backlog: Faust keeps fetching the inbox partition (its position moves) but
    # the agent took none of its messages for longer than stall_after_s. Not a stall: no resume, no restart.
    live = Liveness(stall_after_s=10)
    live.taken(TP, 5, now=0.0)
    for t in range(1, 60):
        verdict = check(live, float(t), end=1000, position=6 + t)
        assert verdict.resume == verdict.give_up == [], t
    for t in range(60, 90):  # then the position stops too: stalled like any other
        verdict = check(live, float(t), end=1000, position=65)
        if verdict.resume:
            assert t >= 69  # 10 s after the position last moved (t=59)
            break
    else:
        raise AssertionError("never resumed")


def test_a_partition_whose_fetched_tail_was_dropped_is_stalled_and_read_again() -> None:
    # Nothing taken since the assignment; Faust fetched the partition to its end but dropped what it
    # fetched (nothing came after it to reveal the hole): the fetch position says caught up, the
    # committed offset says 40 messages wait. Stalled: resumed and sought back to the committed offset,
    # then given up (the worker restarts) if that did not help either.
    live = Liveness(stall_after_s=10)

    def verdict(now: float):
        return live.check(now, [TP], lambda _tp: 100, lambda _tp: 100, False, lambda _tp: 60)

    assert verdict(0.0).resume == []
    first = verdict(11.0)
    assert (first.resume, first.seek) == ([TP], {TP: 60})
    assert live.lag(lambda _tp: 100, lambda _tp: 100, lambda _tp: 60) == {TP: 40}
    assert verdict(22.0).give_up == [TP]
    caught_up = Liveness(stall_after_s=10)  # committed at the end: nothing waits
    assert caught_up.check(100.0, [TP], lambda _tp: 100, lambda _tp: 100, False, lambda _tp: 100).resume == []


def test_a_dropped_tail_after_taken_messages_is_read_again_from_the_one_after_the_last_taken() -> None:
    live = Liveness(stall_after_s=10)
    live.taken(TP, 69, now=0.0)
    # The committed offset (lagging what was taken) is not where the agents resume: 70 is.
    verdict = live.check(11.0, [TP], lambda _tp: 100, lambda _tp: 100, False, lambda _tp: 60)
    assert (verdict.resume, verdict.seek) == ([TP], {TP: 70})


def test_a_stall_with_nothing_fetched_past_the_next_offset_is_only_resumed() -> None:
    # A paused partition (fetch position at the next offset): resuming it is the cure; no seek.
    live = Liveness(stall_after_s=10)
    live.taken(TP, 69, now=0.0)
    verdict = live.check(11.0, [TP], lambda _tp: 100, lambda _tp: 70, False)
    assert (verdict.resume, verdict.seek) == ([TP], {})


def test_a_partition_that_never_committed_without_a_known_start_counts_from_its_fetch_position() -> None:
    # next_offset None (no committed offset, log start unknown this time): as before, the fetch position.
    live = Liveness(stall_after_s=10)
    assert live.check(100.0, [TP], lambda _tp: 100, lambda _tp: 100, False, lambda _tp: None).resume == []
    assert live.check(111.0, [TP], lambda _tp: 100, lambda _tp: 100, False, lambda _tp: None).resume == []


def test_partitions_served_in_turns_by_a_busy_worker_are_not_stalled() -> None:
    # bench/restart.py under a backlog: aiokafka hands over one partition's fetch (~15,000 events) before the
    # next one's, so each of 4 partitions stands still (position and taken) while the 3 others have their
    # turns, 45 s here; the worker takes messages all along. No resume, no restart.
    live = Liveness(stall_after_s=20, starved_after_s=180)
    tps = ["p0", "p1", "p2", "p3"]
    taken = dict.fromkeys(tps, 0)
    for t in range(0, 170):
        serving = tps[(t // 15) % 4]  # 15 s turns
        taken[serving] += 1000
        live.taken(serving, taken[serving], float(t))
        verdict = live.check(float(t), tps, lambda _tp: 1_000_000, taken.get, False, lambda _tp: 0)
        assert verdict.resume == verdict.give_up == [], t


def test_a_partition_starved_beside_busy_ones_is_stalled_after_the_long_limit() -> None:
    live = Liveness(stall_after_s=20, starved_after_s=180)
    resumed_at = None
    for t in range(0, 200):
        live.taken("busy", t, float(t))
        verdict = live.check(float(t), ["busy", "stuck"], lambda _tp: 1_000, {"busy": 1_000, "stuck": 50}.get, False,
                             lambda _tp: 50)
        if verdict.resume:
            assert verdict.resume == ["stuck"]
            resumed_at = t
            break
    assert resumed_at == 180


def test_an_idle_worker_with_a_partition_behind_is_stalled_after_the_short_limit() -> None:
    live = Liveness(stall_after_s=20, starved_after_s=180)
    live.taken("other", 9, 0.0)  # the last message the worker took, of any partition
    assert live.check(1.0, ["p"], lambda _tp: 100, lambda _tp: 60, False, lambda _tp: 60).resume == []
    assert live.check(10.0, ["p"], lambda _tp: 100, lambda _tp: 60, False, lambda _tp: 60).resume == []
    assert live.check(25.0, ["p"], lambda _tp: 100, lambda _tp: 60, False, lambda _tp: 60).resume == ["p"]
