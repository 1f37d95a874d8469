"""eventpipe: PostHog-compatible capture -> Kafka -> Faust processors -> ClickHouse."""

__version__ = "0.1.0"
