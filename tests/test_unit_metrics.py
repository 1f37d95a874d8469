"""eventpipe/metrics.py: the processors' figures in Prometheus text, and reading them back (status)."""

from __future__ import annotations

from eventpipe.metrics import Histogram, ProcessorMetrics, parse


def test_processor_metrics_render_every_family_with_help_and_type() -> None:
    m = ProcessorMetrics()
    m.observe_step("events_raw", {"events": [{}], "warnings": [{"type": "skipping_event_invalid_uuid"}],
                                  "dead": [{}]}, [(b"1\x00lane", {"k": "merge"})])
    m.observe_step("identity_inbox", {"distinct_ids": [{}]}, [(b"1:u", {"k": "merged"})], "joined")
    m.observe_batch(2, 0.02)
    m.set_lag({"events_raw:0": 3, "identity_inbox:0": 0})
    m.watchdog.inc("resume")
    text = m.render()
    for line in (
        "# TYPE eventpipe_processor_messages_total counter",
        'eventpipe_processor_messages_total{topic="events_raw"} 1',
        'eventpipe_processor_messages_total{topic="identity_inbox"} 1',
        'eventpipe_processor_rows_total{kind="dead_letters"} 1',
        'eventpipe_processor_rows_total{kind="distinct_ids"} 1',
        'eventpipe_processor_rows_total{kind="events"} 1',
        'eventpipe_processor_rows_total{kind="warnings"} 1',
        'eventpipe_processor_inbox_messages_total{kind="merge"} 1',
        'eventpipe_processor_inbox_messages_total{kind="merged"} 1',
        'eventpipe_processor_merges_total{outcome="joined"} 1',
        'eventpipe_processor_merges_total{outcome="refused"} 0',
        'eventpipe_processor_warnings_total{type="skipping_event_invalid_uuid"} 1',
        "# TYPE eventpipe_processor_consumer_lag gauge",
        'eventpipe_processor_consumer_lag{partition="events_raw:0"} 3',
        'eventpipe_processor_watchdog_total{action="resume"} 1',
        'eventpipe_processor_watchdog_total{action="restart"} 0',
        "# TYPE eventpipe_processor_batch_seconds histogram",
        'eventpipe_processor_batch_seconds_bucket{le="0.025"} 1',
        "eventpipe_processor_batch_seconds_count 1",
        'eventpipe_processor_batch_messages_bucket{le="1"} 0',
        'eventpipe_processor_batch_messages_bucket{le="10"} 1',
        "eventpipe_processor_batch_messages_sum 2.000000",
    ):
        assert line in text.splitlines(), line
    assert text.endswith("\n")


def test_lag_shows_only_the_partitions_assigned_now() -> None:
    m = ProcessorMetrics()
    m.set_lag({"events_raw:0": 3, "events_raw:1": 1})
    m.set_lag({"events_raw:1": 0})
    assert parse(m.render())["eventpipe_processor_consumer_lag"] == {"events_raw:1": 0}


def test_a_histogram_takes_its_own_buckets() -> None:
    h = Histogram("n", "help", (1, 10))
    for value in (1, 5, 50):
        h.observe(value)
    assert h.render()[2:] == ['n_bucket{le="1"} 1', 'n_bucket{le="10"} 2', 'n_bucket{le="+Inf"} 3',
                              "n_sum 56.000000", "n_count 3"]


def test_parse_reads_back_what_render_writes() -> None:
    m = ProcessorMetrics()
    m.observe_step("events_raw", {}, [])
    got = parse(m.render() + "garbage line\n")
    assert got["eventpipe_processor_messages_total"] == {"events_raw": 1, "identity_inbox": 0}
    assert got["eventpipe_processor_batch_seconds_count"] == {"": 0}
    assert "garbage" not in got
