"""The fault suite (`make chaos`; cases (a)-(c) and (f) also run in `make test`): a retrying client
streams 20k events with client uuids through a stack under `eventpipe run` while a part of it fails.
After each case: every uuid stored once (`uniqExact(uuid)` = N), `count()` after `OPTIMIZE … FINAL` = N,
and the stack serves a probe batch with no one having touched it. Figures: the table at the end."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.chaos import ChaosStack, local_service, stage_pids
from tests.stack import LOCAL_DIR


def sigkill(stage: str):  # type: ignore[no-untyped-def]
    async def fault(chaos: ChaosStack) -> None:
        chaos.kill(stage)

    return fault


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("case", "stage"),
    [
        ("(a) sink SIGKILLed", "sink"),
        ("(b) processor worker SIGKILLed", "processor"),
        ("(c) gateway SIGKILLed", "gateway"),
    ],
)
def test_a_stage_killed_mid_stream(kafka: str, clickhouse_server: str, tmp_path: Path, case: str, stage: str) -> None:
    with ChaosStack(tmp_path) as chaos:
        before = stage_pids(chaos.stack)[stage]
        result = chaos.run_case(case, sigkill(stage))
        assert stage_pids(chaos.stack)[stage] != before, "the supervisor restarted it"
        assert result.ok, result.line()


async def _clickhouse_down(chaos: ChaosStack, seconds: float, second_sink: bool) -> None:
    await asyncio.to_thread(local_service, "clickhouse", "stop")
    try:
        if second_sink:
            await asyncio.sleep(seconds / 4)
            joined = chaos.stack.spawn("sink")  # a rebalance while every insert fails
            log = chaos.stack.logs[-1]
            await asyncio.sleep(seconds / 2)
            joined.terminate()  # ... and another when it leaves, still during the outage
            assert await asyncio.to_thread(joined.wait, 60) == 0
            assert "sink assigned ['" in log.read_text(), "the second sink took partitions during the outage"
            await asyncio.sleep(seconds / 4)
        else:
            await asyncio.sleep(seconds)
    finally:
        await asyncio.to_thread(local_service, "clickhouse", "start")


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("case", "second_sink"),
    [
        pytest.param("(e) ClickHouse down 60 s", False, marks=pytest.mark.chaos),  # sink faults test covers it
        ("(f) 2nd sink joins+leaves, ClickHouse down 60 s", True),
    ],
)
def test_clickhouse_down_for_a_minute(
    kafka: str, clickhouse_server: str, tmp_path: Path, case: str, second_sink: bool
) -> None:
    async def fault(chaos: ChaosStack) -> None:
        await _clickhouse_down(chaos, 60, second_sink=second_sink)

    with ChaosStack(tmp_path) as chaos:
        result = chaos.run_case(case, fault)
        assert result.ok, result.line()


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_the_kafka_broker_killed(kafka: str, clickhouse_server: str, tmp_path: Path) -> None:
    """The single local broker SIGKILLed, restarted 10 s later by its script (the platform, not us)."""
    async def fault(chaos: ChaosStack) -> None:
        os.kill(int((LOCAL_DIR / "kafka" / "kafka.pid").read_text()), signal.SIGKILL)
        await asyncio.sleep(10)
        await asyncio.to_thread(local_service, "kafka", "start")

    with ChaosStack(tmp_path) as chaos:
        result = chaos.run_case("(d) Kafka broker SIGKILLed", fault, settle_s=600)
        assert result.ok, result.line()
