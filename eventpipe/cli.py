"""The ``eventpipe`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
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


def _post_owner(owner: Any, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        owner.url + path,
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {owner.secret}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        raise SystemExit(f"error: {body.get('error', exc)}") from None


def _on_store(settings: config.Settings, path: str, payload: dict[str, Any], local: Any) -> Any:
    """Run against the configured store: through the process that holds an embedded chDB directory
    (its admin endpoint), or by opening the store here (``local(store)``) when no process holds it.
    A directory that is locked but not yet served (its owner is starting) is waited for."""
    from clickhouse.owner import DirectoryBusy, DirLock, OwnerInfo
    from clickhouse.store import open_store

    url = settings.store
    if url.kind != "chdb" or url.path is None:
        store = open_store(url, settings.clickhouse_cluster)
        try:
            return local(store)
        finally:
            store.close()
    deadline = time.monotonic() + 60
    while True:
        owner = OwnerInfo.read(url.path)
        if owner is not None:
            return _post_owner(owner, path, payload)
        lock = DirLock(url.path)
        try:
            lock.acquire()
        except DirectoryBusy:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {url.path} is held by a process that serves no admin endpoint") from None
            time.sleep(0.2)
            continue
        try:
            store = open_store(url, settings.clickhouse_cluster)
            try:
                return local(store)
            finally:
                store.close()
        finally:
            lock.release()


def _cmd_sql(args: argparse.Namespace, settings: config.Settings) -> int:
    from clickhouse.admin import is_read_only

    params = dict(p.split("=", 1) for p in args.param)
    if not is_read_only(args.query):
        raise SystemExit("error: only one read-only statement (SELECT/SHOW/DESCRIBE/EXISTS/EXPLAIN)")

    def local(store: Any) -> dict[str, Any]:
        result = store.query(args.query, params or None)
        return {"columns": result.columns, "rows": result.rows}

    answer = _on_store(settings, "/sql", {"sql": args.query, "params": params or None}, local)
    columns, rows = answer["columns"], [tuple(r) for r in answer["rows"]]
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
    answer = _on_store(
        settings, "/migrate" + suffix, {}, lambda store: {"statements": migrate(store, dry_run=args.dry_run)}
    )
    statements = answer["statements"]
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
