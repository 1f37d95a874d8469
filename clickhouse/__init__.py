"""ClickHouse side of eventpipe: DDL and migrations, the store (native protocol), the sink, the local server."""
