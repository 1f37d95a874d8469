"""Faust agents: raw captured events -> team-resolved, ClickHouse-ready rows."""
