"""processors/app.py without a broker: a batch's offsets become committable only once its rows are
written; messages that cannot be read become dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# -- the agents' batches: offsets committable only once the batch's rows are written -------------------------


class _Consumer:
    """What Message.ack reports the final ack to (Faust's consumer marks the offset committable)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        return True


class _App:
    def __init__(self) -> None:
        self.crashed: list[BaseException] = []

    async def crash(self, reason: BaseException) -> None:
        self.crashed.append(reason)


@dataclass
class _Event:
    message: Any


def _delivered(offsets: Iterable[int]) -> list[_Event]:
    from faust.types.tuples import ConsumerMessage

    events = []
    for offset in offsets:
        message = ConsumerMessage("eventpipe_events_raw", 0, offset, 0.0, 0, None, b"k", b"v", None)
        message.incref()  # the conductor's reference: one channel (the agent's stream)
        events.append(_Event(message))
    return events


def _take_events_batch(app: _App, events: list[_Event], body: Any) -> tuple[list[int], BaseException | None]:
    """Like Faust's take_events: the body runs inside written_or_held, the batch is acked in a finally.
    Returns the offsets acked (committable) and what the body raised out of the loop."""
    from processors.app import written_or_held

    consumer = _Consumer()

    async def run() -> None:
        try:
            async with written_or_held(app, events):  # type: ignore[arg-type]
                await body()
        finally:
            for event in events:
                event.message.ack(consumer)

    try:
        asyncio.run(run())
    except BaseException as exc:
        return consumer.acked, exc
    return consumer.acked, None


def test_a_written_batch_is_acked() -> None:
    app, events = _App(), _delivered(range(3))

    async def body() -> None:
        await asyncio.sleep(0)

    assert _take_events_batch(app, events, body) == ([0, 1, 2], None)
    assert app.crashed == []


def test_a_batch_whose_flush_failed_is_held_and_the_worker_crashes() -> None:
    """take_events acks in a finally: without the hold, a failed outbox flush committed rows never written."""
    from aiokafka.errors import KafkaTimeoutError

    app, events = _App(), _delivered(range(3))
    failure = KafkaTimeoutError("send timed out")

    async def body() -> None:
        raise failure

    assert _take_events_batch(app, events, body) == ([], failure)
    assert app.crashed == [failure]


def test_a_cancelled_batch_is_held_without_crashing() -> None:
    app, events = _App(), _delivered(range(2))

    async def body() -> None:
        raise asyncio.CancelledError

    acked, raised = _take_events_batch(app, events, body)
    assert acked == [] and isinstance(raised, asyncio.CancelledError)
    assert app.crashed == []




# -- messages the agent cannot read become dead letters, never a crash ---------------------------------------


def _event(topic: str, value: bytes, partition: int = 0) -> Any:
    from faust.types.tuples import ConsumerMessage

    message = ConsumerMessage(topic, partition, 0, 0.0, 0, None, b"k", value, None)
    return _Valued(message, value)


@dataclass
class _Valued:
    message: Any
    value: bytes


def _step(topic: str, value: bytes) -> Any:
    from eventpipe.contract import Topics
    from processors.app import Overlay, step_for

    class _Table(dict[str, Any]):
        pass

    return step_for(Overlay(_Table()), _event(topic, value), Topics(), clock=1)  # type: ignore[arg-type]


def test_unreadable_messages_are_dead_letters() -> None:
    from eventpipe.contract import Topics

    t = Topics()
    for topic, value in ((t.raw_events, b"not json"), (t.raw_events, b"[1]"), (t.identity_inbox, b"{"),
                         (t.identity_inbox, b"[]"), (t.identity_inbox, b'{"k": "nonsense"}')):
        step = _step(topic, value)
        assert list(step.rows) == ["dead"], (topic, value)
        assert step.writes == {} and step.sends == []


def test_a_raw_event_without_a_team_is_a_dead_letter() -> None:
    from eventpipe.contract import RawEvent, Topics

    raw = RawEvent(uuid="u", distinct_id="d", token="phc_x", event="e", timestamp="t", now="n", data={})
    step = _step(Topics().raw_events, raw.to_json())
    assert "team_id" in step.rows["dead"][0]["reason"]


def test_every_row_kind_has_a_topic() -> None:
    import inspect

    from eventpipe.contract import Topics
    from processors import protocol
    from processors.app import row_topics

    kinds = set(row_topics(Topics())) | {"dead"}
    used = {k for k in ("events", "persons", "distinct_ids", "overrides", "groups", "warnings", "dead")
            if f'"{k}"' in inspect.getsource(protocol)}
    assert used <= kinds


# -- metrics: what a written batch and the watchdog record -----------------------------------------------------


def test_a_written_batch_is_counted_by_topic_row_kind_send_kind_and_merge_outcome() -> None:
    from eventpipe.contract import RawEvent, Topics
    from eventpipe.metrics import ProcessorMetrics, parse
    from processors import protocol
    from processors.app import record_batch, source_names

    t = Topics()  # _step's
    raw = RawEvent(uuid="u1", distinct_id="d", token="phc_x", event="e", timestamp="2024-01-01 00:00:00.000000",
                   now="2024-01-01 00:00:00.000000", data={}, team_id=1)
    identify = RawEvent(uuid="u2", distinct_id="u", token="phc_x", event="$identify",
                        timestamp="2024-01-01 00:00:01.000000", now="2024-01-01 00:00:01.000000",
                        data={"properties": {"$anon_distinct_id": "a"}}, team_id=1)
    merge = {"k": "merge", "team": 1, "target": "u", "source": "a", "dangerous": False, "target_has_person": False,
             "uuid": "u2", "now": "2024-01-01 00:00:01.000000"}
    steps = [(t.raw_events, _step(t.raw_events, raw.to_json())),
             (t.raw_events, _step(t.raw_events, identify.to_json())),
             (t.identity_inbox, protocol.on_inbox({}, 0, merge)),
             (t.identity_inbox, _step(t.identity_inbox, b"{"))]
    metrics = ProcessorMetrics()
    record_batch(metrics, source_names(t), steps, 0.03)
    got = parse(metrics.render())
    assert got["eventpipe_processor_messages_total"] == {"events_raw": 2, "identity_inbox": 2}
    assert got["eventpipe_processor_rows_total"] == {"events": 1, "persons": 1, "distinct_ids": 2,
                                                      "dead_letters": 1}
    assert got["eventpipe_processor_inbox_messages_total"] == {"merge": 1, "merged": 1}
    assert got["eventpipe_processor_merges_total"] == {"joined": 1, "merged": 0, "same": 0, "refused": 0}
    assert got["eventpipe_processor_batch_messages_count"] == {"": 1}
    assert got["eventpipe_processor_batch_messages_sum"] == {"": 4}
    assert got["eventpipe_processor_batch_seconds_bucket"]["0.05"] == 1


def test_lag_is_labelled_by_unprefixed_topic_and_partition() -> None:
    from faust.types.tuples import TP

    from eventpipe.contract import Topics
    from processors.app import lag_labels, source_names

    t = Topics(prefix="p_")
    lag = {TP(t.raw_events, 3): 5, TP(t.identity_inbox, 0): 0, TP("other", 1): 2}
    assert lag_labels(source_names(t), lag) == {"events_raw:3": 5, "identity_inbox:0": 0, "other:1": 2}


# -- the state cache: reads served from what this worker read or wrote, dropped on every rebalance -----


class _CountingTable:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data, self.reads, self.writes = data, 0, 0

    def get(self, key: str) -> Any:
        self.reads += 1
        return self.data.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        self.data[key] = value


def test_the_cache_serves_repeated_reads_and_sees_applied_writes() -> None:
    from processors.app import Overlay, StateCache

    table, cache = _CountingTable({"a": 1}), StateCache(limit=100)
    first = Overlay(table, cache)  # type: ignore[arg-type]
    first.at(None, 0)
    assert first.get("a") == 1 and first.get("missing") is None
    step_writes = {"a": 2}
    first.pending.append((first.context, 0, "a", step_writes["a"]))
    first.apply()
    second = Overlay(table, cache)  # type: ignore[arg-type]
    second.at(None, 0)
    assert second.get("a") == 2 and second.get("missing") is None
    assert table.reads == 2  # a and missing, once each: the second batch read nothing from the table
    second.at(None, 1)
    assert second.get("a") == 2 and table.reads == 3  # another partition's store is another key space
    cache.clear()
    second.at(None, 0)
    assert second.get("a") == 2 and table.reads == 4


def test_the_cache_is_bounded() -> None:
    from processors.app import StateCache

    cache = StateCache(limit=100)
    for i in range(1000):
        cache.put(0, str(i), i)
    assert len(cache.values) <= 100 and cache.get(0, "999") == 999 and cache.get(0, "0") is StateCache.MISSING


def test_a_write_that_changes_nothing_is_not_staged() -> None:
    from processors.protocol import Step, Tx

    state = {"i:1:a": {"p": {"regs": {"x": 1}}}}
    tx = Tx(state, Step())
    rec = tx.get("i:1:a")
    tx.put("i:1:a", {"p": {"regs": {"x": 1}}})
    assert tx.step.writes == {}
    rec["p"]["regs"]["x"] = 2  # a nested change made in place still counts: the read was snapshotted
    tx.put("i:1:a", rec)
    assert tx.step.writes == {"i:1:a": {"p": {"regs": {"x": 2}}}}
    tx.put("i:1:a", {"p": {"regs": {"x": 1}}})  # back to the stored value after a staged write: staged too
    assert tx.step.writes == {"i:1:a": {"p": {"regs": {"x": 1}}}}
    Tx(state, tx.step).put("new", None)  # never read: written
    assert "new" in tx.step.writes



def test_the_changelog_serve_creates_is_the_one_faust_writes(tmp_path: Path) -> None:
    """serve() creates the identity table's changelog itself; a name (or partition count) Faust no longer
    uses would create a topic nobody writes and bring the startup race back silently."""
    from dataclasses import replace

    from eventpipe.config import Settings
    from processors.app import TABLE, build_app, changelog_spec

    settings = replace(Settings(), replication_factor=1, home=tmp_path)
    changelog = build_app(settings).tables[TABLE].changelog_topic
    spec = changelog_spec(settings)
    assert (spec.name, spec.num_partitions) == (changelog.get_topic_name(), changelog.partitions)


# -- where a partition resumes after its assignment: the broker's committed offset, never below the log start --


class _Admin:
    def __init__(
        self, committed: dict[tuple[str, int], int], fail_times: int = 0, error: BaseException | None = None
    ) -> None:
        self.committed, self.fail_times, self.calls, self.error = committed, fail_times, 0, error
        self.asked: list[list[tuple[str, int]]] = []

    async def list_consumer_group_offsets(self, group: str, partitions: list[Any]) -> dict[Any, Any]:
        from aiokafka.errors import KafkaConnectionError
        from aiokafka.structs import OffsetAndMetadata

        self.calls += 1
        self.asked.append(sorted((tp.topic, tp.partition) for tp in partitions))
        if self.calls <= self.fail_times:
            raise self.error or KafkaConnectionError("coordinator away")
        assert group == "g"
        return {tp: OffsetAndMetadata(self.committed.get((tp.topic, tp.partition), -1), "") for tp in partitions}


class _LogStarts:
    def __init__(self, starts: dict[Any, int]) -> None:
        self.starts = starts

    def committed_offset(self, _tp: Any) -> None:  # Faust's record, empty before its seek: never consulted
        raise AssertionError("resume_offsets must not trust Faust's committed offsets")

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.starts.get(tp, 0) for tp in tps}


def test_partitions_resume_where_the_broker_says_not_where_the_first_message_is() -> None:
    from faust.types import TP

    from processors.app import resume_offsets

    raw0, raw1, inbox0 = TP("raw", 0), TP("raw", 1), TP("inbox", 0)
    admin = _Admin({("raw", 0): 89, ("raw", 1): 3})
    got = asyncio.run(resume_offsets(admin, _LogStarts({raw1: 8, inbox0: 5}), "g", [raw0, raw1, inbox0]))
    assert got == {raw0: 89, raw1: 8, inbox0: 5}  # committed; committed below the log start; never committed


def test_where_partitions_resume_is_asked_again_then_the_error_raised() -> None:
    from aiokafka.errors import KafkaConnectionError
    from faust.types import TP

    import processors.app as app_module

    tp = TP("raw", 0)
    flaky = _Admin({("raw", 0): 7}, fail_times=app_module.RESUME_ATTEMPTS - 1)
    assert asyncio.run(app_module.resume_offsets(flaky, _LogStarts({}), "g", [tp], backoff_s=0)) == {tp: 7}
    down = _Admin({}, fail_times=app_module.RESUME_ATTEMPTS)
    try:
        asyncio.run(app_module.resume_offsets(down, _LogStarts({}), "g", [tp], backoff_s=0))
    except KafkaConnectionError:
        pass
    else:
        raise AssertionError("a broker that never answers must fail the batch (held, the worker restarts)")
    assert down.calls == app_module.RESUME_ATTEMPTS


# -- the watchdog's next offsets: after the last taken, else where the partition resumes, else unknown ------


def test_next_offsets_are_after_the_last_taken_else_where_the_broker_says_it_resumes() -> None:
    from faust.types import TP

    from processors.app import next_offsets
    from processors.ordering import InOrder

    taken, committed, never, deleted = TP("raw", 0), TP("raw", 1), TP("inbox", 0), TP("raw", 2)
    in_order = InOrder()
    in_order.begin(taken, 5)
    for offset in (5, 6, 7):  # took 5..7 since the assignment (committed says 5 still): 8 next
        in_order.admit(taken, offset)
    admin = _Admin({("raw", 0): 5, ("raw", 1): 40, ("raw", 2): 3})
    starts = _LogStarts({never: 12, deleted: 8})
    got = asyncio.run(next_offsets(admin, starts, "g", in_order, [taken, committed, never, deleted]))
    assert got == {taken: 8, committed: 40, never: 12, deleted: 8}
    assert admin.asked == [[("inbox", 0), ("raw", 1), ("raw", 2)]]  # not about the partition that took some
    quiet = _Admin({})
    assert asyncio.run(next_offsets(quiet, starts, "g", in_order, [taken])) == {taken: 8} and quiet.asked == []


def test_next_offsets_of_a_broker_that_does_not_answer_are_unknown() -> None:
    from faust.types import TP

    from processors.app import next_offsets
    from processors.ordering import InOrder

    taken, other = TP("raw", 0), TP("raw", 1)
    in_order = InOrder()
    in_order.begin(taken, 40)
    for error in (None, TimeoutError()):  # a Kafka error, or no answer in time
        admin = _Admin({}, fail_times=1, error=error)
        got = asyncio.run(next_offsets(admin, _LogStarts({}), "g", in_order, [taken, other]))
        assert got == {taken: 40, other: None}
