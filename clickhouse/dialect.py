"""The one place that knows ClickHouse versions differ.

Production DDL targets modern ClickHouse (>= 22.2: DateTime64, column codecs, cityHash64 over UUID,
``insert_deduplication_token``). The Debian 18.16 server used in tests lacks all four; this module
renders the nearest equivalent there and every caller asks it instead of checking versions.
"""

from __future__ import annotations

from dataclasses import dataclass

MODERN = (22, 2)


def parse_version(text: str) -> tuple[int, int]:
    parts = [*text.strip().split("."), "0", "0"][:2]
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class Dialect:
    version: tuple[int, int] = (26, 0)

    @property
    def modern(self) -> bool:
        return self.version >= MODERN

    def datetime64(self) -> str:
        # 18.16 has no sub-second type: seconds precision there (documented in docs/clickhouse.md).
        return "DateTime64(6, 'UTC')" if self.modern else "DateTime"

    def codec(self, codec: str) -> str:
        return f" CODEC({codec})" if self.modern else ""

    def hash_uuid(self, column: str) -> str:
        return f"cityHash64({column})" if self.modern else f"cityHash64(toString({column}))"

    def json_string(self, column: str, key: str) -> str:
        return f"JSONExtractString({column}, '{key}')" if self.modern else f"visitParamExtractString({column}, '{key}')"

    def mergetree_settings(self) -> str:
        # Plain MergeTree deduplicates re-sent blocks only with a non-replicated window.
        return " SETTINGS non_replicated_deduplication_window = 1000" if self.modern else ""

    @property
    def supports_dedup_token(self) -> bool:
        return self.modern
