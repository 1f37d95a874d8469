"""Replication of eventpipe's topics: the auto rule, min.insync.replicas, the setting, kafka.sh's ports."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from eventpipe import config, kafka
from eventpipe.config import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("brokers", "rf"), [(0, 1), (1, 1), (2, 2), (3, 3), (4, 3), (9, 3)])
def test_auto_replication_factor_is_min_3_brokers(brokers: int, rf: int) -> None:
    assert kafka.auto_replication_factor(brokers) == rf


@pytest.mark.parametrize(("rf", "isr"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_min_insync_replicas_is_2_from_rf_3(rf: int, isr: int) -> None:
    assert kafka.min_insync_replicas(rf) == isr


def test_topic_specs_default_is_the_single_node_layout() -> None:
    specs = kafka.topic_specs(Settings(topic_prefix="p_"))
    assert {s.replication_factor for s in specs} == {1}
    assert all("min.insync.replicas" not in s.topic_configs for s in specs)
    teams = next(s for s in specs if s.name == "p_teams")
    assert teams.topic_configs == {"cleanup.policy": "compact"}


def test_topic_specs_create_every_sink_topic() -> None:
    settings = Settings(topic_prefix="p_", partitions=6)
    specs = {s.name: s for s in kafka.topic_specs(settings)}
    for topic in kafka.topics_for(settings).sink_tables():
        assert specs[topic].num_partitions == 6, topic
    assert "p_clickhouse_person_distinct_id_overrides" in specs


@pytest.mark.parametrize(("rf", "isr"), [(2, "1"), (3, "2")])
def test_topic_specs_carry_rf_and_min_isr(rf: int, isr: str) -> None:
    specs = kafka.topic_specs(Settings(topic_prefix="p_", partitions=6), rf)
    assert {s.replication_factor for s in specs} == {rf}
    assert {s.topic_configs["min.insync.replicas"] for s in specs} == {isr}
    teams = next(s for s in specs if s.name == "p_teams")
    assert teams.num_partitions == 1 and teams.topic_configs["cleanup.policy"] == "compact"
    # Every spec has its own configs dict (NewTopic keeps a reference).
    assert len({id(s.topic_configs) for s in specs}) == len(specs)


@pytest.mark.parametrize(("raw", "value"), [(None, 0), ("auto", 0), ("AUTO", 0), ("0", 0), ("1", 1), ("3", 3)])
def test_setting_parses_auto_and_numbers(monkeypatch: pytest.MonkeyPatch, raw: str | None, value: int) -> None:
    if raw is None:
        monkeypatch.delenv("EVENTPIPE_REPLICATION_FACTOR", raising=False)
    else:
        monkeypatch.setenv("EVENTPIPE_REPLICATION_FACTOR", raw)
    assert config.load().replication_factor == value


@pytest.mark.parametrize("raw", ["three", "-1", "2.5"])
def test_setting_refuses_other_values(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("EVENTPIPE_REPLICATION_FACTOR", raw)
    with pytest.raises(ValueError, match="EVENTPIPE_REPLICATION_FACTOR"):
        config.load()


def test_explicit_setting_needs_no_cluster() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", replication_factor=2)  # nothing listens there
    assert asyncio.run(kafka.replication_factor(settings)) == 2
    assert kafka.resolved_replication_factor(settings) == 2


def test_auto_is_read_once_per_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    class Admin:
        calls = 0

        async def describe_cluster(self) -> dict[str, object]:
            Admin.calls += 1
            return {"brokers": [{"node_id": i} for i in (1, 2, 3, 4)]}

    monkeypatch.setattr(kafka, "_resolved_rf", {})
    settings = Settings(kafka_bootstrap="cluster-a:9092")
    assert asyncio.run(kafka.replication_factor(settings, Admin())) == 3  # type: ignore[arg-type]
    # The processors' sync path sees the value ensure_topics read, without another round trip.
    assert kafka.resolved_replication_factor(settings) == 3
    assert asyncio.run(kafka.replication_factor(settings, Admin())) == 3  # type: ignore[arg-type]
    assert Admin.calls == 1


def _kafka_sh(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTPIPE_LOCAL_")}
    return subprocess.run(
        ["bash", str(ROOT / "deploy/local/kafka.sh"), *args],
        env={**clean, "EVENTPIPE_LOCAL_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_kafka_sh_bootstrap_follows_the_broker_count(tmp_path: Path) -> None:
    assert _kafka_sh(tmp_path, "bootstrap").stdout.strip() == "127.0.0.1:19092"
    three = _kafka_sh(tmp_path, "bootstrap", EVENTPIPE_LOCAL_KAFKA_BROKERS="3", EVENTPIPE_LOCAL_KAFKA_PORT="39092")
    assert three.stdout.strip() == "127.0.0.1:39092,127.0.0.1:39093,127.0.0.1:39094"


def test_kafka_sh_refuses_overlapping_controller_ports(tmp_path: Path) -> None:
    res = _kafka_sh(
        tmp_path,
        "bootstrap",
        EVENTPIPE_LOCAL_KAFKA_BROKERS="3",
        EVENTPIPE_LOCAL_KAFKA_PORT="39092",
        EVENTPIPE_LOCAL_KAFKA_CONTROLLER_PORT="39094",
    )
    assert res.returncode != 0 and "overlap" in res.stderr


def test_kafka_sh_status_of_a_cluster_never_started(tmp_path: Path) -> None:
    res = _kafka_sh(tmp_path, "status", EVENTPIPE_LOCAL_KAFKA_BROKERS="3", EVENTPIPE_LOCAL_KAFKA_PORT="39992")
    assert res.returncode == 1
    assert "kafka: 0/3 nodes running" in res.stdout


def test_cached_partitioner_picks_the_default_partitioners_partitions() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    cached, default = kafka.CachedPartitioner(max_keys=100), DefaultPartitioner()
    keys = [f"{team}:user-{i}".encode() for team in (1, 42) for i in range(300)] + [b"", b"\xff" * 7]
    for partitions in ([0, 1, 2, 3], list(range(12)), [0]):
        for key in keys * 2:  # the second time from the cache (cleared when full)
            assert cached(key, partitions, partitions) == default(key, partitions, partitions)
    assert cached(None, [0, 1, 2, 3], [2]) == 2  # no key: an available partition, like the default
