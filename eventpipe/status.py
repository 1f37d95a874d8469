"""``eventpipe status``: what runs (each stage's pid and readiness) and where to connect your own tools."""

from __future__ import annotations

import json
import os
from typing import Any

from eventpipe.config import NoStore, Settings
from eventpipe.supervisor import STAGES, gateway_ready, run_dir


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stage_pids(settings: Settings) -> dict[str, int]:
    """The supervisor's record of its children (``<home>/run/stages.json``)."""
    try:
        doc = json.loads((run_dir(settings) / "stages.json").read_text())
        return {str(k): int(v) for k, v in doc.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def collect(settings: Settings) -> dict[str, Any]:
    pids = stage_pids(settings)
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        pid = pids.get(stage)
        alive = _alive(pid)
        if stage == "gateway":
            ready = gateway_ready(settings)
        else:
            ready = alive and (run_dir(settings) / f"{stage}.ready").exists()
        stages[stage] = {"pid": pid if alive else None, "ready": bool(ready)}
    clickhouse: dict[str, Any]
    try:
        store, reader = settings.store, settings.read_store
        clickhouse = {
            "native": f"{store.host}:{store.port}",
            "http": settings.http_url or None,
            "database": store.database,
            "user": store.user,
            "read_only_user": reader.user,
        }
        server = settings.local_server() if not settings.clickhouse_url else None
        if server is not None:
            clickhouse["credentials"] = str(settings.local_dir / "clickhouse" / "server.json")
    except NoStore as exc:
        clickhouse = {"native": None, "http": None, "error": str(exc)}
    return {"stages": stages, "kafka": settings.kafka_bootstrap, "clickhouse": clickhouse}


def render(status: dict[str, Any]) -> str:
    lines = ["stage       pid       ready"]
    for name, s in status["stages"].items():
        lines.append(f"{name:<11} {s['pid'] or '-':<9} {'yes' if s['ready'] else 'no'}")
    ch = status["clickhouse"]
    lines += ["", f"kafka       {status['kafka']}"]
    if ch.get("native") is None:
        lines.append(f"clickhouse  {ch.get('error', 'not configured')}")
        return "\n".join(lines)
    lines += [
        f"clickhouse  native {ch['native']}  http {ch['http'] or '(not known: set EVENTPIPE_CLICKHOUSE_HTTP_URL)'}",
        f"            database {ch['database']}  user {ch['user']}  read-only user {ch['read_only_user']}",
    ]
    if "credentials" in ch:
        lines.append(f"            passwords in {ch['credentials']} (users.{ch['read_only_user']} for BI tools)")
    return "\n".join(lines)
