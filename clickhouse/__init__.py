"""ClickHouse side of eventpipe: DDL and migrations, the stores (server / embedded chDB), the sink."""
