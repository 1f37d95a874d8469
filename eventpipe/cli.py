"""The ``eventpipe`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from eventpipe import config


def _cmd_teams(args: argparse.Namespace, settings: config.Settings) -> int:
    from eventpipe.kafka import create_team, list_teams

    if args.teams_cmd == "create":
        team = asyncio.run(create_team(settings, args.name))
        if args.json:
            print(json.dumps({"team_id": team.team_id, "api_key": team.api_key, "name": team.name}))
        else:
            print(f"team_id: {team.team_id}\nname:    {team.name}\napi_key: {team.api_key}")
        return 0
    teams = asyncio.run(list_teams(settings))
    if args.json:
        print(
            json.dumps(
                [{"team_id": t.team_id, "name": t.name, "api_key": t.api_key, "revoked": t.revoked} for t in teams]
            )
        )
    else:
        _print_table(
            ["team_id", "name", "api_key", "created_at"], [(t.team_id, t.name, t.api_key, t.created_at) for t in teams]
        )
    return 0


def _owner_request(settings: config.Settings, path: str, payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """POST to the process holding the chDB directory; None when no process holds it."""
    from clickhouse.owner import OwnerInfo

    store = settings.store
    if store.kind != "chdb" or store.path is None:
        return None
    owner = OwnerInfo.read(store.path)
    if owner is None:
        return None
    req = urllib.request.Request(
        owner.url + path,
        data=json.dumps(payload or {}).encode(),
        headers={"Authorization": f"Bearer {owner.secret}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        raise SystemExit(f"error: {body.get('error', exc)}") from None


def _with_local_store(settings: config.Settings, fn: Any) -> Any:
    """Open the configured store in this process (taking the chDB lock when it is embedded)."""
    from clickhouse.owner import DirectoryBusy, DirLock
    from clickhouse.store import open_store

    url = settings.store
    lock = DirLock(url.path) if url.kind == "chdb" and url.path else None
    if lock:
        try:
            lock.acquire()
        except DirectoryBusy:
            raise SystemExit(f"error: {url.path} is held by another process that serves no admin endpoint") from None
    try:
        store = open_store(url)
        try:
            return fn(store)
        finally:
            store.close()
    finally:
        if lock:
            lock.release()


def _cmd_sql(args: argparse.Namespace, settings: config.Settings) -> int:
    params = dict(p.split("=", 1) for p in args.param)
    remote = _owner_request(settings, "/sql", {"sql": args.query, "params": params or None})
    if remote is not None:
        columns, rows = remote["columns"], [tuple(r) for r in remote["rows"]]
    else:
        result = _with_local_store(settings, lambda store: store.query(args.query, params or None))
        columns, rows = result.columns, result.rows
    fmt = args.format or ("table" if sys.stdout.isatty() else "tsv")
    if fmt == "json":
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, ensure_ascii=False))
    elif fmt == "tsv":
        for r in rows:
            print("\t".join(str(v) for v in r))
    else:
        _print_table(columns, rows)
    return 0


def _cmd_migrate(args: argparse.Namespace, settings: config.Settings) -> int:
    from clickhouse.store import migrate

    suffix = "?dry_run=1" if args.dry_run else ""
    remote = _owner_request(settings, "/migrate" + suffix, {})
    statements = (
        remote["statements"]
        if remote is not None
        else _with_local_store(settings, lambda store: migrate(store, dry_run=args.dry_run))
    )
    for sql in statements:
        print(sql.rstrip() + ";\n")
    if not args.dry_run:
        print(f"-- migrations applied to {settings.store.redacted()}", file=sys.stderr)
    return 0


def _print_table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventpipe", description="PostHog-compatible event ingestion into ClickHouse")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run gateway, processors and sink in the foreground (Ctrl-C stops)")
    sub.add_parser("up", help="start `eventpipe run` in the background and wait until ready")
    sub.add_parser("down", help="stop a stack started with `eventpipe up`")
    sub.add_parser("gateway", help="run the HTTP capture gateway")
    sub.add_parser("processors", aliases=["processor"], help="run a processor worker (Faust)")
    sub.add_parser("sink", help="run the ClickHouse sink")
    teams = sub.add_parser("teams", help="create or list teams")
    tsub = teams.add_subparsers(dest="teams_cmd", required=True)
    create = tsub.add_parser("create", help="create a team and print its api key")
    create.add_argument("--name", required=True)
    create.add_argument("--json", action="store_true")
    lst = tsub.add_parser("list", help="list teams")
    lst.add_argument("--json", action="store_true")
    sql = sub.add_parser("sql", help="run a read-only SQL query against the configured store")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "json", "tsv"])
    sql.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a query parameter, used in the query as {NAME:Type}",
    )
    mig = sub.add_parser("migrate", help="apply ClickHouse migrations")
    mig.add_argument("--dry-run", action="store_true", help="print the SQL without running it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "run":
        from eventpipe.supervisor import run

        return run(settings)
    if args.cmd == "up":
        from eventpipe.supervisor import up

        return up(settings)
    if args.cmd == "down":
        from eventpipe.supervisor import down

        return down(settings)
    if args.cmd == "gateway":
        from gateway.app import serve

        serve(settings)
        return 0
    if args.cmd in ("processor", "processors"):
        from processors.app import serve as serve_processor

        serve_processor(settings)
        return 0
    if args.cmd == "sink":
        from clickhouse.sink import serve as serve_sink

        serve_sink(settings)
        return 0
    handlers = {"teams": _cmd_teams, "sql": _cmd_sql, "migrate": _cmd_migrate}
    return handlers[args.cmd](args, settings)


if __name__ == "__main__":
    sys.exit(main())
