"""Pure unit tests of eventpipe/config.py: store URLs and EVENTPIPE_* settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eventpipe import config
from eventpipe.config import Settings, StoreURL, load


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "clickhouse://user:pass@db.example:9440/analytics",
            StoreURL("clickhouse", host="db.example", port=9440, user="user", password="pass", database="analytics"),
        ),
        ("clickhouse://default@127.0.0.1:19000", StoreURL("clickhouse", port=19000)),
        ("clickhouse://host", StoreURL("clickhouse", host="host")),
        ("clickhouse://host/", StoreURL("clickhouse", host="host")),
        ("clickhouse://host:9001/db/", StoreURL("clickhouse", host="host", port=9001, database="db")),
        ("clickhouse://", StoreURL("clickhouse")),
        (
            "clickhouse://us%40er:p%40ss%2Fw%3Ard@h:1/d",
            StoreURL("clickhouse", host="h", port=1, user="us@er", password="p@ss/w:rd", database="d"),
        ),
        ("clickhouse://u:@h/d", StoreURL("clickhouse", host="h", user="u", database="d")),
        ("clickhouse://[::1]:9000/db", StoreURL("clickhouse", host="::1", database="db")),
        ("clickhouses://h:9440/db", StoreURL("clickhouse", host="h", port=9440, database="db", secure=True)),
        ("clickhouses://h/db", StoreURL("clickhouse", host="h", port=9440, database="db", secure=True)),
        ("tcp://h/db", StoreURL("clickhouse", host="h", database="db")),
        ("clickhouse://HOST.Example/db", StoreURL("clickhouse", host="host.example", database="db")),
        ("CLICKHOUSE://h/db", StoreURL("clickhouse", host="h", database="db")),  # schemes are case-insensitive
    ],
)
def test_parse_clickhouse_urls(url: str, expected: StoreURL) -> None:
    assert StoreURL.parse(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "chdb:///var/lib/eventpipe",  # the embedded store is gone: one store path, the native protocol
        "http://host:8123/db",
        "https://host/db",
        "mysql://u:p@h/db",
        "postgres://h/db",
        "/var/lib/eventpipe",
        "host:9000",
        "clickhouse://h:notaport/db",
        "clickhouse://h:99999/db",
    ],
)
def test_parse_bad_urls_raise_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        StoreURL.parse(url)


def test_redacted_never_shows_the_password() -> None:
    url = StoreURL.parse("clickhouse://admin:s3cret@h:9000/db")
    assert "s3cret" not in url.redacted() and "s3cret" not in repr(url)
    assert url.redacted() == "clickhouse://admin@h:9000/db"
    with pytest.raises(ValueError) as err:
        StoreURL.parse("mysql://admin:s3cret@h/db")
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# load()
# ---------------------------------------------------------------------------------------------------------------------


def assert_fields(settings: Settings, **expected: object) -> None:
    assert {name: getattr(settings, name) for name in expected} == expected


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("EVENTPIPE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_load_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = load()
    home = config.default_home().resolve()
    assert_fields(
        settings,
        kafka_bootstrap="127.0.0.1:19092",
        clickhouse_url="",
        host="127.0.0.1",
        port=8000,
        home=home,
        topic_prefix="eventpipe_",
        partitions=4,
        admin_host="127.0.0.1",
        admin_secret="",
        processor_admin_port=0,
        produce_timeout_s=10.0,
        max_body_bytes=2 * 1024 * 1024,
        max_batch_body_bytes=20 * 1024 * 1024,
        sink_batch_rows=10_000,
        sink_batch_seconds=1.0,
    )
    assert settings.local_dir == home


def test_load_reads_every_variable(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "KAFKA_BOOTSTRAP": "kafka:9092",
        "CLICKHOUSE_URL": "clickhouse://u:p@ch:9000/ep",
        "HOST": "0.0.0.0",
        "PORT": "8080",
        "HOME": str(tmp_path),
        "TOPIC_PREFIX": "test_",
        "PARTITIONS": "12",
        "ADMIN_HOST": "127.0.0.2",
        "ADMIN_SECRET": "9f3c1a7be04d5e2f8a6b1c0d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f",
        "PROCESSOR_ADMIN_PORT": "9102",
        "PRODUCE_TIMEOUT_S": "2.5",
        "MAX_BODY_BYTES": "1000",
        "MAX_BATCH_BODY_BYTES": "5000",
        "SINK_BATCH_ROWS": "50",
        "SINK_BATCH_SECONDS": "0.25",
    }
    for name, value in env.items():
        clean_env.setenv(f"EVENTPIPE_{name}", value)
    settings = load()
    assert_fields(
        settings,
        kafka_bootstrap="kafka:9092",
        clickhouse_url="clickhouse://u:p@ch:9000/ep",
        host="0.0.0.0",
        port=8080,
        home=tmp_path.resolve(),
        topic_prefix="test_",
        partitions=12,
        admin_host="127.0.0.2",
        admin_secret="9f3c1a7be04d5e2f8a6b1c0d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f",
        processor_admin_port=9102,
        produce_timeout_s=2.5,
        max_body_bytes=1000,
        max_batch_body_bytes=5000,
        sink_batch_rows=50,
        sink_batch_seconds=0.25,
    )
    assert settings.store == StoreURL("clickhouse", host="ch", user="u", password="p", database="ep")


def local_server_json(directory: Path, writer: str = "w" * 43, reader: str = "r" * 43) -> None:
    from clickhouse.local_server import READER, WRITER

    (directory / "clickhouse").mkdir(parents=True)
    doc = {"host": "127.0.0.1", "tcp_port": 19000, "http_port": 18123, "database": "eventpipe",
           "users": {WRITER: writer, READER: reader}}  # fmt: skip
    (directory / "clickhouse" / "server.json").write_text(json.dumps(doc))


def test_without_a_url_the_local_server_is_the_store(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("EVENTPIPE_LOCAL_DIR", str(tmp_path))
    local_server_json(tmp_path)
    settings = load()
    assert settings.store == StoreURL(port=19000, user="eventpipe", password="w" * 43, database="eventpipe")
    assert settings.read_store == StoreURL(port=19000, user="eventpipe_reader", password="r" * 43, database="eventpipe")
    assert settings.http_url == "http://127.0.0.1:18123"


def test_without_a_url_or_a_local_server_the_error_says_what_to_do(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("EVENTPIPE_LOCAL_DIR", str(tmp_path))
    with pytest.raises(config.NoStore, match=r"EVENTPIPE_CLICKHOUSE_URL.*deploy/local/clickhouse\.sh"):
        _ = load().store


def test_a_url_wins_over_the_local_server(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("EVENTPIPE_LOCAL_DIR", str(tmp_path))
    local_server_json(tmp_path)
    clean_env.setenv("EVENTPIPE_CLICKHOUSE_URL", "clickhouse://u:p@ch:9000/ep")
    settings = load()
    assert settings.store == settings.read_store == StoreURL(host="ch", user="u", password="p", database="ep")
    assert settings.http_url == ""  # unknown for a remote server unless configured
    clean_env.setenv("EVENTPIPE_CLICKHOUSE_READ_URL", "clickhouse://ro:x@ch:9000/ep")
    clean_env.setenv("EVENTPIPE_CLICKHOUSE_HTTP_URL", "https://ch:8443")
    settings = load()
    assert settings.read_store == StoreURL(host="ch", user="ro", password="x", database="ep")
    assert settings.http_url == "https://ch:8443"


def test_home_expands_user(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("EVENTPIPE_HOME", "~/ep")
    assert load().home == (tmp_path / "ep").resolve()


@pytest.mark.parametrize("name", ["PORT", "PARTITIONS", "MAX_BODY_BYTES", "MAX_BATCH_BODY_BYTES", "SINK_BATCH_ROWS"])
@pytest.mark.parametrize("value", ["abc", "1.5", ""])
def test_bad_integers_name_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(f"EVENTPIPE_{name}", value)
    with pytest.raises(ValueError, match=f"EVENTPIPE_{name}"):
        load()


@pytest.mark.parametrize("name", ["PRODUCE_TIMEOUT_S", "SINK_BATCH_SECONDS"])
def test_bad_floats_raise(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(f"EVENTPIPE_{name}", "soon")
    with pytest.raises(ValueError):
        load()


def test_default_home_of_a_source_checkout() -> None:
    assert config.default_home() == config.PACKAGE_ROOT / ".local"


@pytest.mark.parametrize("value", ["hunter2", "CHANGE-ME", "change-me-change-me-change-me-change-me", "a" * 64,
                                   "this-is-my-example-secret-of-many-chars"])  # fmt: skip
def test_short_or_placeholder_secrets_are_refused(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("EVENTPIPE_ADMIN_SECRET", value)
    with pytest.raises(ValueError, match="EVENTPIPE_ADMIN_SECRET must be at least 32 random characters") as err:
        load()
    assert value not in str(err.value)


def test_kafka_compression_defaults_and_reads(clean_env: pytest.MonkeyPatch) -> None:
    assert load().kafka_compression == config.DEFAULT_KAFKA_COMPRESSION
    assert config.DEFAULT_KAFKA_COMPRESSION in config.KAFKA_COMPRESSIONS
    for codec in config.KAFKA_COMPRESSIONS:
        clean_env.setenv("EVENTPIPE_KAFKA_COMPRESSION", f" {codec.upper()} ")
        assert load().kafka_compression == codec
    clean_env.setenv("EVENTPIPE_KAFKA_COMPRESSION", "")
    assert load().kafka_compression == config.DEFAULT_KAFKA_COMPRESSION


def test_unknown_kafka_compression_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EVENTPIPE_KAFKA_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="EVENTPIPE_KAFKA_COMPRESSION must be one of none, gzip, snappy, lz4, zstd"):
        load()
