"""Settings, read once from ``EVENTPIPE_*`` environment variables.

Every process (gateway, processor, sink, CLI) builds its :class:`Settings` with :func:`load`, so the
README's table of variables is the whole configuration surface.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """Where local state lives: the checkout's ``.local`` for a source install, else ``./.local``
    (the local Kafka and ClickHouse of deploy/local/ live there too, see EVENTPIPE_LOCAL_DIR)."""
    if (PACKAGE_ROOT / "pyproject.toml").exists():
        return PACKAGE_ROOT / ".local"
    return Path.cwd() / ".local"


@dataclass(frozen=True)
class StoreURL:
    """A parsed ClickHouse URL: ``clickhouse://user:password@host:port/database`` (native protocol;
    ``clickhouses://`` for TLS)."""

    kind: str = "clickhouse"
    host: str = "127.0.0.1"
    port: int = 9000
    user: str = "default"
    password: str = field(default="", repr=False)  # never in a repr, a log line or an error
    database: str = "default"
    secure: bool = False

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("clickhouse", "clickhouses", "tcp"):
            secure = scheme == "clickhouses"
            return cls(
                kind="clickhouse",
                host=parts.hostname or "127.0.0.1",
                port=parts.port or (9440 if secure else 9000),
                user=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                database=(parts.path or "/").strip("/") or "default",
                secure=secure,
            )
        shown = StoreURL.redact(url)
        raise ValueError(
            f"unsupported ClickHouse URL {shown!r}: use clickhouse://user:password@host:port/database "
            "(native protocol; clickhouses:// for TLS)"
        )

    @staticmethod
    def redact(url: str) -> str:
        """``url`` with any password replaced, for messages about a URL that may not parse."""
        parts = urlsplit(url)
        if parts.password is None:
            return url
        return url.replace(f":{parts.password}@", ":***@", 1)

    def redacted(self) -> str:
        scheme = "clickhouses" if self.secure else "clickhouse"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{self.database}"


class NoStore(ValueError):
    """No EVENTPIPE_CLICKHOUSE_URL and no local server to default to."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"EVENTPIPE_{name}", default)


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"EVENTPIPE_{name} must be an integer, got {raw!r}") from None


def _replication_factor() -> int:
    """EVENTPIPE_REPLICATION_FACTOR: ``auto`` (or unset, or 0) = 0, else a positive integer."""
    raw = _env("REPLICATION_FACTOR", "auto").strip().lower()
    if raw in ("", "auto", "0"):
        return 0
    if not raw.isdigit():
        raise ValueError(f"EVENTPIPE_REPLICATION_FACTOR must be 'auto' or a positive integer, got {raw!r}")
    return int(raw)


# zstd: 1/30 of the bytes of the gateway's raw events on the bench's messages (lz4 1/12), producer CPU
# like lz4's and no more than uncompressed, broker CPU per message below uncompressed (bench/README.md).
DEFAULT_KAFKA_COMPRESSION = "zstd"
# Codecs aiokafka's producer writes (gzip from the standard library; snappy, lz4 and zstd through cramjam).
KAFKA_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


def _kafka_compression() -> str:
    """EVENTPIPE_KAFKA_COMPRESSION: one of :data:`KAFKA_COMPRESSIONS` (empty: the default)."""
    raw = _env("KAFKA_COMPRESSION", DEFAULT_KAFKA_COMPRESSION).strip().lower() or DEFAULT_KAFKA_COMPRESSION
    if raw not in KAFKA_COMPRESSIONS:
        raise ValueError(f"EVENTPIPE_KAFKA_COMPRESSION must be one of {', '.join(KAFKA_COMPRESSIONS)}, got {raw!r}")
    return raw


MIN_SECRET_CHARS = 32
_PLACEHOLDERS = ("change", "example", "placeholder", "secret", "password", "todo", "xxx")


def _secret(name: str) -> str:
    """A secret from the environment: empty (unset) or at least 32 characters that are not a placeholder
    left over from an example. The value itself never appears in the error."""
    raw = _env(name, "")
    if not raw:
        return ""
    lowered = raw.lower()
    if len(raw) < MIN_SECRET_CHARS or len(set(raw)) < 8 or any(p in lowered for p in _PLACEHOLDERS):
        raise ValueError(
            f"EVENTPIPE_{name} must be at least {MIN_SECRET_CHARS} random characters, not a placeholder "
            f"(got {len(raw)} characters); make one with: openssl rand -hex 32"
        )
    return raw


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:19092"
    # Compression of the batches every eventpipe producer writes (consumers decompress transparently).
    kafka_compression: str = DEFAULT_KAFKA_COMPRESSION
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
    processor_admin_port: int = 0  # each processor worker's admin endpoint (0: any free port)
    # A processor worker's name: its local state lives in <home>/faust/<name>, so a worker restarted under
    # the same name (a StatefulSet pod, the supervisor's one worker) reopens its RocksDB state and reads
    # only the changelog written since; two live workers must not share one.
    worker_name: str = field(default_factory=socket.gethostname)
    # The local ClickHouse server's state (deploy/local/clickhouse.sh): its server.json says where it
    # listens and the passwords; used when EVENTPIPE_CLICKHOUSE_URL is empty.
    local_dir: Path = field(default_factory=default_home)
    clickhouse_read_url: str = ""
    clickhouse_http_url: str = ""
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
    # Replication factor of the topics eventpipe and Faust create; 0 = auto: min(3, brokers in the cluster).
    replication_factor: int = 0
    # `eventpipe squash-overrides` without --every repeats every this many seconds; 0: runs once.
    squash_interval_s: float = 0.0

    def local_server(self) -> Any:
        """The local ClickHouse server's description, or None when it was never started here."""
        from clickhouse.local_server import LocalServer

        return LocalServer.read(self.local_dir / "clickhouse")

    def _local_url(self, reader: bool) -> str:
        server = self.local_server()
        if server is None:
            raise NoStore(
                "no ClickHouse configured: set EVENTPIPE_CLICKHOUSE_URL=clickhouse://user:password@host:port/db, "
                f"or start the local server (make up, or bash deploy/local/clickhouse.sh start; it writes "
                f"{self.local_dir / 'clickhouse' / 'server.json'})"
            )
        return str(server.url(reader=reader))

    @property
    def store(self) -> StoreURL:
        """Where the sink writes and migrations run."""
        return StoreURL.parse(self.clickhouse_url or self._local_url(reader=False))

    @property
    def read_store(self) -> StoreURL:
        """What ``eventpipe sql`` connects as: EVENTPIPE_CLICKHOUSE_READ_URL, else the local server's
        read-only user, else the store itself (``eventpipe sql`` always asks for readonly=1 too)."""
        if self.clickhouse_read_url:
            return StoreURL.parse(self.clickhouse_read_url)
        return StoreURL.parse(self.clickhouse_url or self._local_url(reader=True))

    @property
    def http_url(self) -> str:
        """The store's HTTP interface, when known (the local server's, or EVENTPIPE_CLICKHOUSE_HTTP_URL)."""
        if self.clickhouse_http_url or self.clickhouse_url:
            return self.clickhouse_http_url
        server = self.local_server()
        return str(server.http) if server is not None else ""


def load() -> Settings:
    home = Path(_env("HOME", str(default_home()))).expanduser().resolve()
    local_dir = Path(os.environ.get("EVENTPIPE_LOCAL_DIR") or default_home()).expanduser().resolve()
    return Settings(
        kafka_bootstrap=_env("KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        kafka_compression=_kafka_compression(),
        clickhouse_url=_env("CLICKHOUSE_URL", ""),
        clickhouse_read_url=_env("CLICKHOUSE_READ_URL", ""),
        clickhouse_http_url=_env("CLICKHOUSE_HTTP_URL", ""),
        local_dir=local_dir,
        clickhouse_cluster=_env("CLICKHOUSE_CLUSTER", ""),
        host=_env("HOST", "127.0.0.1"),
        port=_int("PORT", 8000),
        home=home,
        topic_prefix=_env("TOPIC_PREFIX", "eventpipe_"),
        partitions=_int("PARTITIONS", 4),
        admin_host=_env("ADMIN_HOST", "127.0.0.1"),
        admin_secret=_secret("ADMIN_SECRET"),
        admin_port=_int("ADMIN_PORT", 0),
        processor_admin_port=_int("PROCESSOR_ADMIN_PORT", 0),
        worker_name=_env("WORKER_NAME", "") or socket.gethostname(),
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
        replication_factor=_replication_factor(),
        squash_interval_s=float(_env("SQUASH_INTERVAL_S", "0")),
    )
