"""Pure unit tests of eventpipe/config.py: store URLs and EVENTPIPE_* settings."""

from __future__ import annotations

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
        ("clickhouses://h:9440/db", StoreURL("clickhouse", host="h", port=9440, database="db")),
        ("tcp://h/db", StoreURL("clickhouse", host="h", database="db")),
        ("clickhouse://HOST.Example/db", StoreURL("clickhouse", host="host.example", database="db")),
        ("CLICKHOUSE://h/db", StoreURL("clickhouse", host="h", database="db")),  # schemes are case-insensitive
    ],
)
def test_parse_clickhouse_urls(url: str, expected: StoreURL) -> None:
    assert StoreURL.parse(url) == expected


def test_parse_chdb_absolute(tmp_path: Path) -> None:
    parsed = StoreURL.parse(f"chdb://{tmp_path}/store")
    assert parsed == StoreURL("chdb", path=(tmp_path / "store").resolve(), database="default")
    assert parsed.path is not None and parsed.path.is_absolute()


def test_parse_chdb_triple_slash() -> None:
    parsed = StoreURL.parse("chdb:///var/lib/eventpipe")
    assert parsed.kind == "chdb"
    assert parsed.path == Path("/var/lib/eventpipe").resolve()


def test_parse_chdb_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert StoreURL.parse("chdb://./data").path == (tmp_path / "data").resolve()


def test_parse_chdb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert StoreURL.parse("chdb://~/ep").path == (tmp_path / "ep").resolve()


def test_parse_chdb_percent_encoded(tmp_path: Path) -> None:
    assert StoreURL.parse(f"chdb://{tmp_path}/with%20space").path == (tmp_path / "with space").resolve()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "chdb://",
        "chdb:",
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


def test_redacted_never_shows_the_password(tmp_path: Path) -> None:
    url = StoreURL.parse("clickhouse://admin:s3cret@h:9000/db")
    assert "s3cret" not in url.redacted()
    assert url.redacted() == "clickhouse://admin@h:9000/db"
    assert StoreURL.parse(f"chdb://{tmp_path}").redacted() == f"chdb://{tmp_path.resolve()}"


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
        clickhouse_url=f"chdb://{home / 'chdb'}",
        host="127.0.0.1",
        port=8000,
        home=home,
        topic_prefix="eventpipe_",
        partitions=4,
        admin_host="127.0.0.1",
        admin_secret="",
        produce_timeout_s=10.0,
        max_body_bytes=2 * 1024 * 1024,
        max_batch_body_bytes=20 * 1024 * 1024,
        sink_batch_rows=10_000,
        sink_batch_seconds=1.0,
    )
    assert settings.store == StoreURL("chdb", path=(home / "chdb").resolve())


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
        "ADMIN_SECRET": "hunter2",
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
        admin_secret="hunter2",
        produce_timeout_s=2.5,
        max_body_bytes=1000,
        max_batch_body_bytes=5000,
        sink_batch_rows=50,
        sink_batch_seconds=0.25,
    )
    assert settings.store == StoreURL("clickhouse", host="ch", user="u", password="p", database="ep")


def test_home_drives_the_default_store(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("EVENTPIPE_HOME", str(tmp_path / "state"))
    settings = load()
    assert settings.home == (tmp_path / "state").resolve()
    assert settings.clickhouse_url == f"chdb://{(tmp_path / 'state').resolve() / 'chdb'}"
    assert settings.store.path == (tmp_path / "state" / "chdb").resolve()


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


def test_settings_store_without_url_uses_home(tmp_path: Path) -> None:
    settings = Settings(clickhouse_url="", home=tmp_path)
    assert settings.store == StoreURL("chdb", path=(tmp_path / "chdb").resolve())


def test_default_home_of_a_source_checkout() -> None:
    assert config.default_home() == config.PACKAGE_ROOT / ".local"
