"""Minimal Prometheus text-format metrics: labelled counters and gauges, latency histograms."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counter:
    def __init__(self, name: str, help_: str, label: str) -> None:
        self.name, self.help, self.label = name, help_, label
        self.values: dict[str, float] = defaultdict(float)

    def inc(self, label: str, amount: float = 1) -> None:
        self.values[label] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f'{self.name}{{{self.label}="{k}"}} {v:g}' for k, v in sorted(self.values.items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = _BUCKETS) -> None:
        """``buckets``: upper bounds, ascending (default: latencies in seconds)."""
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        i = bisect_left(self.buckets, value)  # the first bound >= value
        if i < len(self.counts):
            self.counts[i] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        lines += [
            f'{self.name}_bucket{{le="+Inf"}} {self.total}',
            f"{self.name}_sum {self.sum:.6f}",
            f"{self.name}_count {self.total}",
        ]
        return lines


class Gauge(Counter):
    def set(self, label: str, value: float) -> None:
        self.values[label] = value

    def render(self) -> list[str]:
        return [line.replace(" counter", " gauge") if line.startswith("# TYPE") else line for line in super().render()]


def render(*metrics: Counter | Histogram) -> str:
    return "\n".join(line for m in metrics for line in m.render()) + "\n"


class GatewayMetrics:
    def __init__(self) -> None:
        self.requests = Counter("eventpipe_gateway_requests_total", "Capture requests by route.", "route")
        self.events = Counter("eventpipe_gateway_events_total", "Events accepted by route.", "route")
        self.bytes = Counter("eventpipe_gateway_request_bytes_total", "Request body bytes by route.", "route")
        self.errors = Counter("eventpipe_gateway_errors_total", "Refused requests by error code.", "code")
        self.produce_latency = Histogram(
            "eventpipe_gateway_produce_seconds", "Time from publish to Kafka acknowledging a request's events."
        )

    def render(self, open_connections: int = 0, refused: int = 0, header_timeouts: int = 0) -> str:
        """The counters above, plus the connection guard's figures (gateway/server.py)."""
        conns = Gauge("eventpipe_gateway_open_connections", "Client connections open now.", "listener")
        conns.set("capture", open_connections)
        dropped = Counter(
            "eventpipe_gateway_connections_dropped_total",
            "Connections answered and closed by the guard: over the cap (503) or headers too slow (408).",
            "reason",
        )
        dropped.inc("over_cap", refused)
        dropped.inc("header_timeout", header_timeouts)
        return render(self.requests, self.events, self.bytes, self.errors, self.produce_latency, conns, dropped)


class SinkMetrics:
    def __init__(self) -> None:
        self.rows = Counter("eventpipe_sink_rows_total", "Rows inserted, by table.", "table")
        self.batches = Counter("eventpipe_sink_batches_total", "Batches inserted, by table.", "table")
        self.retries = Counter("eventpipe_sink_insert_retries_total", "Failed inserts retried, by table.", "table")
        self.dead_letters = Counter("eventpipe_sink_dead_letters_total", "Rows refused by ClickHouse.", "table")
        self.lag = Gauge("eventpipe_sink_consumer_lag", "Messages behind the partition's end.", "partition")
        self.insert_latency = Histogram("eventpipe_sink_insert_seconds", "Time of one batch insert.")

    def render(self) -> str:
        return render(self.rows, self.batches, self.retries, self.dead_letters, self.lag, self.insert_latency)


# Batch sizes of the processors' take_events (at most processors.app.BATCH events).
_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000)
MERGE_OUTCOMES = ("joined", "merged", "same", "refused")  # processors/protocol.py, Step.outcome
PROCESSOR_SOURCES = ("events_raw", "identity_inbox")  # the topics a worker reads


class ProcessorMetrics:
    """One processor worker's figures. Labels name topics and row kinds without the topic prefix;
    lag is per ``topic:partition`` (e.g. ``events_raw:3``) of the partitions assigned now."""

    def __init__(self) -> None:
        self.messages_in = Counter(
            "eventpipe_processor_messages_total", "Messages processed, by source topic.", "topic"
        )
        self.rows_out = Counter("eventpipe_processor_rows_total", "Rows produced for ClickHouse, by kind.", "kind")
        self.inbox_out = Counter(
            "eventpipe_processor_inbox_messages_total", "Identity inbox messages sent, by message kind.", "kind"
        )
        self.merges = Counter("eventpipe_processor_merges_total", "Merges decided by a merge lane, by outcome.",
                              "outcome")
        self.warnings = Counter("eventpipe_processor_warnings_total", "Ingestion warnings produced, by type.", "type")
        self.lag = Gauge("eventpipe_processor_consumer_lag", "Messages behind the partition's end.", "partition")
        self.watchdog = Counter(
            "eventpipe_processor_watchdog_total",
            "Watchdog actions: stalled partitions resumed, worker restarts.",
            "action",
        )
        self.batch_latency = Histogram(
            "eventpipe_processor_batch_seconds", "Time of one batch: compute, output acks, state writes."
        )
        self.batch_size = Histogram("eventpipe_processor_batch_messages", "Messages in one batch.", _BATCH_SIZES)
        for topic in PROCESSOR_SOURCES:  # shown at 0 from the start, so rate() and alerts see them
            self.messages_in.inc(topic, 0)
        for outcome in MERGE_OUTCOMES:
            self.merges.inc(outcome, 0)
        for action in ("resume", "restart"):
            self.watchdog.inc(action, 0)

    def observe_step(
        self,
        topic: str,
        rows: Mapping[str, list[dict[str, Any]]],
        sends: Iterable[tuple[bytes, dict[str, Any]]],
        merge_outcome: str | None = None,
    ) -> None:
        """One message of ``topic`` and what it turned into (a protocol step's rows, sends, outcome);
        row kind ``dead`` is counted as ``dead_letters``."""
        self.messages_in.inc(topic)
        for kind, kind_rows in rows.items():
            self.rows_out.inc("dead_letters" if kind == "dead" else kind, len(kind_rows))
            if kind == "warnings":
                for row in kind_rows:
                    self.warnings.inc(str(row.get("type")))
        for _key, message in sends:
            self.inbox_out.inc(str(message.get("k")))
        if merge_outcome is not None:
            self.merges.inc(merge_outcome)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def set_lag(self, lag: Mapping[str, int]) -> None:
        """The lag of every partition assigned now (partitions no longer assigned disappear)."""
        self.lag.values.clear()
        for partition, behind in lag.items():
            self.lag.set(partition, behind)

    def render(self) -> str:
        return render(self.messages_in, self.rows_out, self.inbox_out, self.merges, self.warnings, self.lag,
                      self.watchdog, self.batch_latency, self.batch_size)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[a-zA-Z_]+="((?:[^"\\]|\\.)*)"\})? (\S+)$')


def parse(text: str) -> dict[str, dict[str, float]]:
    """Samples of a text exposition with at most one label, as written by :func:`render`:
    ``{name: {label value: value}}`` (``""`` for an unlabelled sample). Other lines are skipped."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label, value = match.groups()
        try:
            out.setdefault(name, {})[label or ""] = float(value)
        except ValueError:
            continue
    return out
