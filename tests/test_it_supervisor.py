"""`eventpipe run` heals: a stage that dies is restarted and the stack serves again with no one touching
it; a stage that keeps failing makes it give up, saying which and why; SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tests.chaos import stage_pids
from tests.stack import Stack, poll


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.timeout(600)
def test_killed_stages_are_restarted_and_the_stack_serves_again(
    kafka: str, clickhouse_server: str, tmp_path: Path
) -> None:
    stack = Stack(tmp_path)
    stack.uses_clickhouse = True
    supervisor = stack.spawn("run")
    try:
        poll(lambda: (stack.home / "run" / "ready").exists(), 120, 0.2, "eventpipe run ready")
        api_key = stack.create_team("heal")
        for n, stage in enumerate(("sink", "processor", "gateway")):
            before = stage_pids(stack)[stage]
            os.kill(before, signal.SIGKILL)
            poll(lambda s=stage, b=before: stage_pids(stack).get(s, b) != b, 60, 0.2, f"{stage} restarted")
            if stage == "gateway":
                poll(stack._gateway_ready, 60, 0.2, "gateway ready again")
            else:
                poll(lambda s=stage: (stack.home / "run" / f"{s}.ready").exists(), 90, 0.2, f"{stage} ready again")
            status, _ = stack.post("/capture/", {"api_key": api_key, "event": f"after-{stage}", "distinct_id": "u"})
            assert status == 200
            poll(lambda k=n + 1: len(stack.sql("SELECT event FROM events")) == k, 90, 0.5, f"event after {stage} kill")
        assert supervisor.poll() is None
        log = stack.logs[0].read_text()
        assert "sink killed by SIGKILL; restarting in" in log
        children = stage_pids(stack).values()
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=90) == 0
        assert not any(alive(pid) for pid in children)
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.close()


@pytest.mark.timeout(300)
def test_a_stage_that_keeps_failing_makes_it_give_up_and_say_why(kafka: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = Stack(tmp_path)
        stack.env["EVENTPIPE_PORT"] = str(taken.getsockname()[1])  # the gateway can never bind
        supervisor = stack.spawn("run")
        try:
            assert supervisor.wait(timeout=240) == 1
        finally:
            stack.close()
        log = stack.logs[0].read_text()
    assert "gateway failed 5 times within 60s" in log, log[-3000:]
    assert "giving up" in log and "address already in use" in log.lower()
