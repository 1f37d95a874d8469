"""The supervisor's restart policy: backoff, a window, giving up."""

from __future__ import annotations

from eventpipe.restart import RestartPolicy


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(max_failures=10, window_s=1000, base_delay_s=0.5, max_delay_s=4)
    assert [policy.on_exit(t) for t in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_gives_up_after_max_failures_within_the_window() -> None:
    policy = RestartPolicy(max_failures=3, window_s=60)
    assert policy.on_exit(0) is not None
    assert policy.on_exit(10) is not None
    assert policy.on_exit(20) is None
    assert policy.recent == 3


def test_failures_outside_the_window_are_forgotten() -> None:
    policy = RestartPolicy(max_failures=3, window_s=60, base_delay_s=1)
    assert policy.on_exit(0) == 1
    assert policy.on_exit(30) == 2
    # The first failure is 61 s old: two recent ones, not three -> restart, and the delay follows.
    assert policy.on_exit(61) == 2
    assert policy.on_exit(200) == 1  # a stage that ran for minutes starts from the shortest delay
