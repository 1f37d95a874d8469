"""Settings, read once from ``EVENTPIPE_*`` environment variables.

Every process (gateway, processor, sink, CLI) builds its :class:`Settings` with :func:`load`, so the
README's table of variables is the whole configuration surface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """Where local state lives: the checkout's ``.local`` for a source install, else ``./.local``."""
    if (PACKAGE_ROOT / "pyproject.toml").exists():
        return PACKAGE_ROOT / ".local"
    return Path.cwd() / ".local"


@dataclass(frozen=True)
class StoreURL:
    """A parsed ``EVENTPIPE_CLICKHOUSE_URL``: a ClickHouse server or an embedded chDB directory."""

    kind: str  # "clickhouse" | "chdb"
    host: str = "127.0.0.1"
    port: int = 9000
    user: str = "default"
    password: str = ""
    database: str = "default"
    path: Path | None = None

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        parts = urlsplit(url)
        if parts.scheme == "chdb":
            # chdb:///abs/path or chdb://./relative (netloc + path joined)
            raw = unquote((parts.netloc or "") + parts.path)
            if not raw:
                raise ValueError(f"chdb URL needs a directory: {url!r} (e.g. chdb:///var/lib/eventpipe)")
            return cls(kind="chdb", path=Path(raw).expanduser().resolve(), database="default")
        if parts.scheme in ("clickhouse", "clickhouses", "tcp"):
            return cls(
                kind="clickhouse",
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 9000,
                user=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                database=(parts.path or "/").strip("/") or "default",
            )
        raise ValueError(
            f"unsupported EVENTPIPE_CLICKHOUSE_URL {url!r}: use clickhouse://user:pass@host:port/db or chdb:///path"
        )

    def redacted(self) -> str:
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        return f"clickhouse://{self.user}@{self.host}:{self.port}/{self.database}"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EVENTPIPE_{name}", default)


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"EVENTPIPE_{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:19092"
    clickhouse_url: str = ""
    clickhouse_cluster: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    home: Path = field(default_factory=default_home)
    topic_prefix: str = "eventpipe_"
    partitions: int = 4
    admin_host: str = "127.0.0.1"
    admin_secret: str = ""
    admin_port: int = 0
    produce_timeout_s: float = 10.0
    max_body_bytes: int = 2 * 1024 * 1024
    max_batch_body_bytes: int = 20 * 1024 * 1024
    sink_batch_rows: int = 10_000
    sink_batch_seconds: float = 1.0
    trusted_proxies: str = ""
    # Gateway hardening (docs/capture.md, "Limits"):
    max_event_bytes: int = 1_000_000
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    decode_workers: int = 1
    request_memory_bytes: int = 64 * 1024 * 1024

    @property
    def store(self) -> StoreURL:
        return StoreURL.parse(self.clickhouse_url or f"chdb://{self.home / 'chdb'}")


def load() -> Settings:
    home = Path(_env("HOME", str(default_home()))).expanduser().resolve()
    return Settings(
        kafka_bootstrap=_env("KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        clickhouse_url=_env("CLICKHOUSE_URL", f"chdb://{home / 'chdb'}"),
        clickhouse_cluster=_env("CLICKHOUSE_CLUSTER", ""),
        host=_env("HOST", "127.0.0.1"),
        port=_int("PORT", 8000),
        home=home,
        topic_prefix=_env("TOPIC_PREFIX", "eventpipe_"),
        partitions=_int("PARTITIONS", 4),
        admin_host=_env("ADMIN_HOST", "127.0.0.1"),
        admin_secret=_env("ADMIN_SECRET", ""),
        admin_port=_int("ADMIN_PORT", 0),
        produce_timeout_s=float(_env("PRODUCE_TIMEOUT_S", "10")),
        max_body_bytes=_int("MAX_BODY_BYTES", 2 * 1024 * 1024),
        max_batch_body_bytes=_int("MAX_BATCH_BODY_BYTES", 20 * 1024 * 1024),
        sink_batch_rows=_int("SINK_BATCH_ROWS", 10_000),
        sink_batch_seconds=float(_env("SINK_BATCH_SECONDS", "1.0")),
        trusted_proxies=_env("TRUSTED_PROXIES", ""),
        max_event_bytes=_int("MAX_EVENT_BYTES", 1_000_000),
        max_connections=_int("MAX_CONNECTIONS", 1000),
        header_timeout_s=float(_env("HEADER_TIMEOUT_S", "10")),
        body_timeout_s=float(_env("BODY_TIMEOUT_S", "60")),
        decode_workers=_int("DECODE_WORKERS", 1),
        request_memory_bytes=_int("REQUEST_MEMORY_BYTES", 64 * 1024 * 1024),
    )
