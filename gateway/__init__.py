"""PostHog-compatible HTTP capture gateway: parse, validate, publish to Kafka, answer after the ack."""
