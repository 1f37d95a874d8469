"""The processors' Faust transport (processors/transport.py): commits never step over an unread offset.

These tests also pin the upstream behaviour the subclass corrects, so they fail when a faust-streaming
upgrade changes it (then the subclass may be unnecessary or need a new look)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers import by_url
from faust.types import TP

from processors import transport

TOPIC_PARTITION = TP("eventpipe_events_raw", 0)


@pytest.fixture
def consumer() -> transport.Consumer:
    app = faust.App("transport-test", broker="eventpipe://127.0.0.1:1")
    c = app.consumer  # built lazily, never started: no broker is contacted
    assert isinstance(c, transport.Consumer)
    return c


def _acked(c: transport.Consumer, committed: int | None, offsets: list[int]) -> None:
    c._committed_offset[TOPIC_PARTITION] = committed
    c._acked[TOPIC_PARTITION] = list(offsets)
    c._acked_index[TOPIC_PARTITION] = set(offsets)


def test_the_eventpipe_scheme_is_our_transport() -> None:
    assert by_url("eventpipe://localhost:9092") is transport.Transport
    assert issubclass(transport.Transport, faust_aiokafka.Transport)
    assert transport.Transport.Consumer is transport.Consumer


def test_upstream_still_steps_over_one_missing_offset(consumer: transport.Consumer) -> None:
    """faust-streaming 0.15's head check lets exactly one unread offset through (committed=14 is the next
    offset to read, 14 was never acked, and it commits 21). If this fails, upstream changed the rule."""
    _acked(consumer, 14, list(range(15, 21)))
    assert faust_aiokafka.Consumer._new_offset(consumer, TOPIC_PARTITION) == 21


def test_a_missing_head_offset_holds_the_commit(consumer: transport.Consumer) -> None:
    _acked(consumer, 14, list(range(15, 21)))
    assert consumer._new_offset(TOPIC_PARTITION) is None
    _acked(consumer, 14, list(range(14, 21)))
    assert consumer._new_offset(TOPIC_PARTITION) == 21


def test_a_hole_in_the_middle_commits_up_to_it(consumer: transport.Consumer) -> None:
    _acked(consumer, 10, [10, 11, 12, 14, 15])
    assert consumer._new_offset(TOPIC_PARTITION) == 13


def test_fetcher_jumps_are_not_acks(consumer: transport.Consumer) -> None:
    """Upstream records a jump in fetched offsets as a gap that later counts as acked."""
    _acked(consumer, 10, [10])
    asyncio.run(consumer._add_gap(TOPIC_PARTITION, 11, 13))
    _acked(consumer, 10, [10, 14])
    assert consumer._new_offset(TOPIC_PARTITION) == 11


class _Calls:
    def __init__(self, earliest: int) -> None:
        self.earliest = earliest
        self.seeks: list[tuple[TP, int]] = []


def _fake_broker(c: transport.Consumer, earliest: int) -> _Calls:
    calls = _Calls(earliest)

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return {tp: calls.earliest for tp in tps}

    async def seek(tp: TP, offset: int) -> None:
        calls.seeks.append((tp, offset))

    c.assignment = lambda: {TOPIC_PARTITION}  # type: ignore[method-assign]
    c.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
    c.seek = seek  # type: ignore[method-assign]
    return calls


def _hold_for(c: transport.Consumer, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask for the commit, let ``seconds`` pass, ask again, and let the heal task run."""

    async def scenario() -> None:
        now = time.monotonic()
        monkeypatch.setattr(transport.time, "monotonic", lambda: now)
        assert c._new_offset(TOPIC_PARTITION) is None
        monkeypatch.setattr(transport.time, "monotonic", lambda: now + seconds)
        c._new_offset(TOPIC_PARTITION)
        for _ in range(10):
            await asyncio.sleep(0)

    asyncio.run(scenario())


def test_a_lasting_hole_is_read_again(consumer: transport.Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_broker(consumer, earliest=0)
    _acked(consumer, 14, list(range(15, 21)))
    _hold_for(consumer, transport.HEAL_AFTER_S / 2, monkeypatch)
    assert calls.seeks == []
    _hold_for(consumer, transport.HEAL_AFTER_S + 0.1, monkeypatch)
    assert calls.seeks == [(TOPIC_PARTITION, 14)]


def test_a_hole_below_the_log_start_is_stepped_over(
    consumer: transport.Consumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_broker(consumer, earliest=15)
    _acked(consumer, 14, list(range(15, 21)))
    _hold_for(consumer, transport.HEAL_AFTER_S + 0.1, monkeypatch)
    assert calls.seeks == []
    assert consumer._new_offset(TOPIC_PARTITION) == 21


def test_upstream_attributes_the_subclass_relies_on(consumer: transport.Consumer) -> None:
    base: Any = faust_aiokafka.Consumer
    for name in ("_new_offset", "_add_gap", "earliest_offsets", "seek", "assignment"):
        assert callable(getattr(base, name)), name
    for name in ("_committed_offset", "_acked", "_acked_index"):
        assert hasattr(consumer, name), name


def test_upstream_builds_the_worker_consumer_as_our_copy_assumes() -> None:
    """ConsumerThread._create_worker_consumer is upstream's with fetch_max_wait_ms changed; if upstream's
    source changes, compare the two and update the copy (and these digests)."""
    import hashlib
    import inspect

    from faust.transport.drivers import aiokafka as upstream

    def digest(fn: object) -> str:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()  # type: ignore[arg-type]

    assert digest(upstream.AIOKafkaConsumerThread._create_worker_consumer) == (
        "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7"
    )
    assert digest(upstream.Consumer._new_consumer_thread) == (
        "0870ec53dea75083995e3565c0f0a25a1c63ecceaeb238e92e2585e3623af5a9"
    )
    assert "fetch_max_wait_ms=1500" in inspect.getsource(upstream.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=FETCH_MAX_WAIT_MS" in inspect.getsource(transport.ConsumerThread._create_worker_consumer)
