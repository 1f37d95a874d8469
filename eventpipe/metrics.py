"""Minimal Prometheus text-format metrics: labelled counters and gauges, latency histograms."""

from __future__ import annotations

from collections import defaultdict

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
    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self.counts = [0] * len(_BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum += seconds
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(_BUCKETS, self.counts, strict=True):
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
