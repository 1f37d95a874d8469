"""``eventpipe status``: what runs (each stage's pid and readiness) and where to connect your own tools."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from eventpipe.config import NoStore, Settings
from eventpipe.metrics import MERGE_OUTCOMES, parse
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


def admin_endpoints(settings: Settings) -> dict[int, tuple[str, str]]:
    """The processor workers' admin endpoints: pid -> (URL, secret), from the files of live workers
    (``<home>/run/processor-admin-<pid>.json``, written when EVENTPIPE_ADMIN_SECRET is unset); with the
    secret and EVENTPIPE_PROCESSOR_ADMIN_PORT set, the one endpoint they name (pid 0: not known)."""
    found: dict[int, tuple[str, str]] = {}
    for path in sorted(run_dir(settings).glob("processor-admin-*.json")):
        try:
            pid = int(path.stem.rsplit("-", 1)[1])
            doc = json.loads(path.read_text())
            if _alive(pid):
                found[pid] = (str(doc["url"]), str(doc["secret"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found and settings.admin_secret and settings.processor_admin_port:
        url = f"http://{settings.admin_host}:{settings.processor_admin_port}/metrics"
        found[0] = (url, settings.admin_secret)
    return found


def processor_figures(text: str) -> dict[str, Any]:
    """What ``eventpipe status`` shows of a worker's /metrics: messages in, lag, merges."""
    samples = parse(text)
    merges = samples.get("eventpipe_processor_merges_total", {})
    return {
        "messages_in": {k: int(v) for k, v in samples.get("eventpipe_processor_messages_total", {}).items()},
        "lag": int(sum(samples.get("eventpipe_processor_consumer_lag", {}).values())),
        "partitions": len(samples.get("eventpipe_processor_consumer_lag", {})),
        "merges": {k: int(merges.get(k, 0)) for k in MERGE_OUTCOMES},
    }


def processors(settings: Settings, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pid, (url, secret) in admin_endpoints(settings).items():
        entry: dict[str, Any] = {"pid": pid or None, "metrics": url}
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                entry.update(processor_figures(resp.read().decode()))
        except OSError as exc:
            entry["error"] = str(exc)
        out.append(entry)
    return out


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
    return {"stages": stages, "processors": processors(settings), "kafka": settings.kafka_bootstrap,
            "clickhouse": clickhouse}


def _render_processors(workers: list[dict[str, Any]]) -> list[str]:
    lines = []
    for w in workers:
        who = f"worker {w['pid'] or '?'}"
        if "error" in w:
            lines.append(f"  {who:<17} metrics unavailable ({w['error']})")
            continue
        taken = "  ".join(f"{topic} {n}" for topic, n in sorted(w["messages_in"].items())) or "0"
        merges = " ".join(f"{k} {n}" for k, n in w["merges"].items())
        lines.append(f"  {who:<17} in: {taken}  lag {w['lag']} ({w['partitions']} partitions)  merges: {merges}")
    return lines


def render(status: dict[str, Any]) -> str:
    lines = ["stage       pid       ready"]
    for name, s in status["stages"].items():
        lines.append(f"{name:<11} {s['pid'] or '-':<9} {'yes' if s['ready'] else 'no'}")
    lines += _render_processors(status.get("processors", []))
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
