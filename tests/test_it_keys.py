"""Project keys end to end: `teams create --api-key`, `rotate-key --grace`, `revoke-key` and `rename`
through the real registry topic, seen by two running gateways without a restart, events stored in
ClickHouse under the team the key belongs to."""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import ujson

from tests.stack import Stack, poll


@pytest.fixture(scope="module")
def keys_stack(kafka: str, clickhouse_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("keys")))
    try:
        s.start()
        s.second = s.add_gateway()  # type: ignore[attr-defined]
        yield s
    finally:
        s.close()


def gateways(stack: Stack) -> list[str]:
    return [stack.url, stack.second]  # type: ignore[attr-defined]


def gateway_pids(stack: Stack) -> list[int]:
    """The gateways still running (the same processes all along: none restarted)."""
    procs = zip(stack.procs, stack.logs, strict=True)
    return [p.pid for p, log in procs if log.name.startswith("gateway") and p.poll() is None]


def capture(url: str, api_key: str, distinct_id: str, query: str = "") -> tuple[int, Any]:
    body = ujson.dumps({"api_key": api_key, "event": "keys-test", "distinct_id": distinct_id}).encode()
    headers = {"Content-Type": "application/json"}
    return answer(urllib.request.Request(f"{url}/capture/{query}", data=body, headers=headers))


def get(url: str) -> tuple[int, Any]:
    return answer(urllib.request.Request(url))


def answer(req: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, ujson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, ujson.loads(exc.read())


def teams_cmd(stack: Stack, *args: str) -> Any:
    res = stack.cli("teams", *args, "--json")
    assert res.returncode == 0, res.stderr
    return ujson.loads(res.stdout)


def refused(stack: Stack, *args: str) -> str:
    res = stack.cli("teams", *args)
    assert res.returncode == 1, (res.stdout, res.stderr)
    return res.stderr


def listed(stack: Stack, team_id: int) -> dict[str, Any]:
    return next(t for t in teams_cmd(stack, "list") if t["team_id"] == team_id)


def stored_team(stack: Stack, distinct_id: str) -> int:
    rows = poll(
        lambda: stack.sql(f"SELECT team_id FROM events WHERE distinct_id = '{distinct_id}'"),
        60,
        0.3,
        f"event of {distinct_id} in ClickHouse",
    )
    return int(rows[0]["team_id"])


def until_status(url: str, api_key: str, status: int, what: str) -> dict[str, Any]:
    def answer() -> dict[str, Any] | None:
        got, body = capture(url, api_key, "probe")
        return body if got == status else None

    return poll(answer, 60, 0.3, what)


def test_a_posthog_project_key_is_kept_and_its_events_stored(keys_stack: Stack) -> None:
    key = "phc_" + secrets.token_urlsafe(32)
    team = teams_cmd(keys_stack, "create", "--name", "migrated", "--api-key", key)
    assert team["api_key"] == key and team["name"] == "migrated"
    for n, url in enumerate(gateways(keys_stack)):
        assert capture(url, key, f"kept-{n}") == (200, {"status": 1})
    assert stored_team(keys_stack, "kept-0") == stored_team(keys_stack, "kept-1") == team["team_id"]

    assert "belongs to a team already" in refused(keys_stack, "create", "--name", "again", "--api-key", key)
    assert "personal api key" in refused(keys_stack, "create", "--name", "x", "--api-key", "phx_" + "a" * 43)
    assert "phc_ followed by" in refused(keys_stack, "create", "--name", "x", "--api-key", "phc_short")
    assert [t["name"] for t in teams_cmd(keys_stack, "list") if key in (k["api_key"] for k in t["keys"])] == [
        "migrated"
    ]


def test_rotation_keeps_the_old_key_for_its_grace_then_refuses_it(keys_stack: Stack) -> None:
    pids = gateway_pids(keys_stack)
    assert len(pids) == 2
    team = teams_cmd(keys_stack, "create", "--name", "rotating")
    old = team["api_key"]
    rotated = teams_cmd(keys_stack, "rotate-key", str(team["team_id"]), "--grace", "15s")
    new = rotated["api_key"]
    assert new != old and rotated["team_id"] == team["team_id"]
    [old_state] = [k for k in rotated["keys"] if k["api_key"] == old]
    assert old_state["state"] == "valid"
    until = datetime.strptime(old_state["valid_until"], "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC).timestamp()

    for n, url in enumerate(gateways(keys_stack)):
        assert capture(url, new, f"new-{n}") == (200, {"status": 1})
        assert capture(url, old, f"old-{n}") == (200, {"status": 1})
    assert time.time() < until - 1, "the grace ended before both keys were tried: give it more seconds"
    states = {k["api_key"]: k["state"] for k in listed(keys_stack, team["team_id"])["keys"]}
    assert states == {old: "valid", new: "active"}

    # No record arrives when the grace ends: each gateway's clock refuses the old key.
    for url in gateways(keys_stack):
        body = until_status(url, old, 401, f"the old key refused by {url} after its grace")
        assert body["code"] == "invalid_api_key"
        assert capture(url, new, "new-after") == (200, {"status": 1})
    assert time.time() >= until - 1  # refused only once its grace was over (give or take the seconds' rounding)
    for distinct_id in ("new-0", "new-1", "old-0", "old-1"):
        assert stored_team(keys_stack, distinct_id) == team["team_id"]
    states = {k["api_key"]: k["state"] for k in listed(keys_stack, team["team_id"])["keys"]}
    assert states == {old: "revoked", new: "active"}
    assert gateway_pids(keys_stack) == pids  # no gateway restarted


def test_a_revoked_key_is_refused_by_every_gateway(keys_stack: Stack) -> None:
    team = teams_cmd(keys_stack, "create", "--name", "revoking")
    key = team["api_key"]
    for url in gateways(keys_stack):
        assert capture(url, key, "before-revoke") == (200, {"status": 1})
    revoked = teams_cmd(keys_stack, "revoke-key", key)
    assert (revoked["state"], revoked["changed"]) == ("revoked", True)
    for url in gateways(keys_stack):
        until_status(url, key, 401, f"the revoked key refused by {url}")
    assert listed(keys_stack, team["team_id"])["revoked"] is True
    assert teams_cmd(keys_stack, "revoke-key", key)["changed"] is False  # revoking again changes nothing
    # A revoked team gets a key again by rotation.
    fresh = teams_cmd(keys_stack, "rotate-key", "revoking")["api_key"]
    assert capture(keys_stack.url, fresh, "after-rotation") == (200, {"status": 1})
    assert stored_team(keys_stack, "after-rotation") == team["team_id"]


def test_rename_and_refusals_of_unknown_teams_and_keys(keys_stack: Stack) -> None:
    team = teams_cmd(keys_stack, "create", "--name", "before")
    renamed = teams_cmd(keys_stack, "rename", str(team["team_id"]), "after")
    assert renamed == {"team_id": team["team_id"], "name": "after"}
    assert listed(keys_stack, team["team_id"])["name"] == "after"
    table = keys_stack.cli("teams", "list")
    assert table.returncode == 0
    assert any(line.split()[:2] == [str(team["team_id"]), "after"] for line in table.stdout.splitlines())

    assert "no team 'nobody'" in refused(keys_stack, "rotate-key", "nobody")
    assert "no team '999'" in refused(keys_stack, "rename", "999", "x")
    assert "no team holds the api key" in refused(keys_stack, "revoke-key", "phc_" + "z" * 43)
    teams_cmd(keys_stack, "create", "--name", "twin")
    teams_cmd(keys_stack, "create", "--name", "twin")
    assert "2 teams are named 'twin'" in refused(keys_stack, "rotate-key", "twin")


def test_a_personal_key_is_refused_on_capture(keys_stack: Stack) -> None:
    personal = "phx_" + secrets.token_urlsafe(32)
    for url in gateways(keys_stack):
        status, body = capture(url, personal, "personal")
        assert status == 401 and body["code"] == "personal_api_key"
        assert "phc_" in body["detail"]
        status, body = get(f"{url}/capture/?api_key={personal}")  # a GET's query key: refused before the body
        assert status == 401 and body["code"] == "personal_api_key" and "phc_" in body["detail"]
