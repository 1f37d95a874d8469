"""The ``eventpipe`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from typing import Any

from clickhouse.squash import BATCH_ROWS, DEFAULT_MIN_AGE_S
from eventpipe import config

DEFAULT_ROTATION_GRACE = "24h"  # long enough to roll a new key out to every app, short for a leaked one


def _grace(text: str) -> float:
    from eventpipe.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _teams_create(args: argparse.Namespace, settings: config.Settings, now: float) -> str:
    from eventpipe.kafka import create_team

    team = asyncio.run(create_team(settings, args.name, args.api_key))
    if args.json:
        return json.dumps({"team_id": team.team_id, "api_key": team.api_key, "name": team.name})
    return f"team_id: {team.team_id}\nname:    {team.name}\napi_key: {team.api_key}"


def _teams_rotate(args: argparse.Namespace, settings: config.Settings, now: float) -> str:
    from eventpipe.kafka import rotate_key

    info, new = asyncio.run(rotate_key(settings, args.team, args.grace))
    if args.json:
        return json.dumps({**info.as_json(now), "api_key": new.api_key})
    old = [f"         {k.api_key} {k.state(now)}" for k in info.keys if k.api_key != new.api_key]
    return "\n".join([f"team_id: {info.team_id}", f"name:    {info.name}", f"api_key: {new.api_key} (new)", *old])


def _teams_revoke(args: argparse.Namespace, settings: config.Settings, now: float) -> str:
    from eventpipe.kafka import revoke_key

    info, key, changed = asyncio.run(revoke_key(settings, args.api_key, args.grace))
    if not info.valid_keys(now):
        print(
            f"note: team {info.team_id} has no valid key left; `eventpipe teams rotate-key {info.team_id}` issues one",
            file=sys.stderr,
        )
    if args.json:
        return json.dumps({"team_id": info.team_id, "name": info.name, "changed": changed, **key.as_json(now)})
    unchanged = "" if changed else " (unchanged)"
    return f"{key.api_key} (team {info.team_id} {info.name}): {key.state(now)}{unchanged}"


def _teams_rename(args: argparse.Namespace, settings: config.Settings, now: float) -> str:
    from eventpipe.kafka import rename_team

    info = asyncio.run(rename_team(settings, args.team, args.name))
    if args.json:
        return json.dumps({"team_id": info.team_id, "name": info.name})
    return f"team {info.team_id}: {info.name}"


def _teams_list(args: argparse.Namespace, settings: config.Settings, now: float) -> str | None:
    from eventpipe.kafka import list_teams

    teams = asyncio.run(list_teams(settings))
    if args.json:
        return json.dumps([t.as_json(now) for t in teams])
    rows = [(t.team_id, t.name, k.api_key, k.state(now), k.created_at) for t in teams for k in reversed(t.keys)]
    _print_table(["team_id", "name", "api_key", "state", "created_at"], rows)
    return None


def _cmd_teams(args: argparse.Namespace, settings: config.Settings) -> int:
    import time

    from eventpipe.teams import TeamError

    commands = {
        "create": _teams_create,
        "rotate-key": _teams_rotate,
        "revoke-key": _teams_revoke,
        "rename": _teams_rename,
        "list": _teams_list,
    }
    try:
        out = commands[args.teams_cmd](args, settings, time.time())
    except TeamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        print(out)
    return 0


def _cmd_sql(args: argparse.Namespace, settings: config.Settings) -> int:
    from clickhouse import readonly

    params = dict(p.split("=", 1) for p in args.param)
    try:
        result = readonly.run(settings.read_store, args.query, params or None)
    except readonly.QueryRefused as exc:
        raise SystemExit(f"error: {exc}") from None
    columns = result.columns
    rows = [tuple(readonly.as_text(v, t) for v, t in zip(r, result.types, strict=True)) for r in result.rows]
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
    from clickhouse.store import migrate, open_store

    store = open_store(settings.store, settings.clickhouse_cluster)
    try:
        statements = migrate(store, dry_run=args.dry_run)
    finally:
        store.close()
    for sql in statements:
        print(sql.rstrip() + ";\n")
    if not args.dry_run:
        print(f"-- migrations applied to {settings.store.redacted()}", file=sys.stderr)
    return 0


_UNKNOWN_TABLE = 60  # ClickHouse's error code for a missing table: the database was never migrated


def _cmd_squash(args: argparse.Namespace, settings: config.Settings) -> int:
    import time

    from clickhouse.failures import Kind, classify_store
    from clickhouse.squash import squash
    from clickhouse.store import open_store

    every = settings.squash_interval_s if args.every is None else args.every

    def progress(line: str) -> None:
        print(f"-- {line}", file=sys.stderr, flush=True)

    try:
        while True:
            try:
                store = open_store(settings.store, settings.clickhouse_cluster)
                try:
                    report = squash(
                        store,
                        team=args.team,
                        min_age_s=args.min_age,
                        dry_run=args.dry_run,
                        batch_rows=args.batch,
                        progress=progress,
                    )
                finally:
                    store.close()
            except Exception as exc:
                if getattr(exc, "code", None) == _UNKNOWN_TABLE:
                    raise SystemExit(
                        f"error: {settings.store.redacted()} has no overrides table yet: run `eventpipe migrate` "
                        "(the sink also migrates at start)"
                    ) from None
                # A periodic run outlives ClickHouse restarts: it tries again next time; anything else stops.
                if not every or classify_store(exc) is not Kind.TRANSIENT:
                    raise
                progress(f"squash failed, retrying in {every:g}s: {exc!r}")
            else:
                verb = "would squash" if args.dry_run else "squashed"
                print(
                    f"{verb} {report.squashed} overrides, rewrote {report.events} events"
                    f"{' (dry run)' if args.dry_run else ''}; {report.kept} kept for the next run",
                    flush=True,
                )
            if not every:
                return 0
            time.sleep(every)  # the interval between runs, not a wait for a condition
    except KeyboardInterrupt:
        # Safe at any point: overrides go only after their events were rewritten (clickhouse/squash.py).
        progress("interrupted")
        return 130


def _cmd_status(args: argparse.Namespace, settings: config.Settings) -> int:
    from eventpipe.status import collect, render

    status = collect(settings)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def _print_table(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)


def _add_import_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="load a PostHog export or JSONL events (gzip too) into a team, resumable",
        description="Imports historical events (docs/history.md): JSONL, PostHog batch exports, API documents.",
    )
    p.add_argument("file", help="the export, or - for standard input (no checkpoint then)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--api-key", help="the team's project api key")
    who.add_argument("--team-id", type=int, help="the team's id")
    p.add_argument("--rate", type=float, metavar="EVENTS_PER_S", help="at most this many events per second")
    p.add_argument("--checkpoint", type=pathlib.Path, help="checkpoint file (default: under EVENTPIPE_HOME/imports)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress-interval", type=float, default=1.0, metavar="SECONDS", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventpipe", description="PostHog-compatible event ingestion into ClickHouse")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run gateway, processors and sink in the foreground (Ctrl-C stops)")
    sub.add_parser("up", help="start `eventpipe run` in the background and wait until ready")
    sub.add_parser("down", help="stop a stack started with `eventpipe up`")
    sub.add_parser("gateway", help="run the HTTP capture gateway")
    sub.add_parser("processors", aliases=["processor"], help="run a processor worker (Faust)")
    sub.add_parser("sink", help="run the ClickHouse sink")
    teams = sub.add_parser("teams", help="create, list and rename teams; rotate and revoke their api keys")
    tsub = teams.add_subparsers(dest="teams_cmd", required=True)
    create = tsub.add_parser("create", help="create a team and print its api key")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--api-key", metavar="phc_…", help="keep this existing PostHog project api key (default: mint a new one)"
    )
    lst = tsub.add_parser("list", help="list teams, with the state of each of their keys")
    rotate = tsub.add_parser("rotate-key", help="issue a new api key; the team's other keys end after a grace")
    rotate.add_argument("team", metavar="TEAM", help="team id or (unique) name")
    rotate.add_argument(
        "--grace",
        type=_grace,
        default=DEFAULT_ROTATION_GRACE,  # argparse converts a string default with type
        metavar="DURATION",
        help=f"how long the old keys stay valid: 30s, 15m, 24h, 7d; 0: revoked now (default {DEFAULT_ROTATION_GRACE})",
    )
    revoke = tsub.add_parser("revoke-key", help="revoke an api key, now or after a grace")
    revoke.add_argument("api_key", metavar="KEY")
    revoke.add_argument(
        "--grace",
        type=_grace,
        default=0.0,
        metavar="DURATION",
        help="keep the key valid this long first (default 0: now)",
    )
    rename = tsub.add_parser("rename", help="rename a team")
    rename.add_argument("team", metavar="TEAM", help="team id or (unique) name")
    rename.add_argument("name", metavar="NAME")
    for cmd in (create, lst, rotate, revoke, rename):
        cmd.add_argument("--json", action="store_true")
    sql = sub.add_parser("sql", help="run one read-only SQL query (ClickHouse enforces readonly=1 and limits)")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "json", "tsv"])
    sql.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a query parameter, used in the query as {NAME:Type}",
    )
    _add_import_parser(sub)
    status = sub.add_parser(
        "status", help="stages (pid, ready), processor workers' figures, the Kafka bootstrap and ClickHouse's addresses"
    )
    status.add_argument("--json", action="store_true")
    mig = sub.add_parser("migrate", help="apply ClickHouse migrations")
    mig.add_argument("--dry-run", action="store_true", help="print the SQL without running it")
    sq = sub.add_parser(
        "squash-overrides",
        help="rewrite events.person_id of merged distinct ids and delete their person overrides",
    )
    sq.add_argument("--team", type=int, help="only this team's overrides")
    sq.add_argument("--dry-run", action="store_true", help="count what would be squashed, change nothing")
    sq.add_argument(
        "--min-age",
        type=int,
        default=DEFAULT_MIN_AGE_S,
        metavar="SECONDS",
        help=f"only overrides written at least this long ago (default {DEFAULT_MIN_AGE_S}: two days)",
    )
    sq.add_argument("--batch", type=int, default=BATCH_ROWS, metavar="N", help="overrides per mutation")
    sq.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="repeat every SECONDS until interrupted (default EVENTPIPE_SQUASH_INTERVAL_S; 0: run once)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, settings)
    except config.NoStore as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `eventpipe sql … | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


def _dispatch(args: argparse.Namespace, settings: config.Settings) -> int:
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
    handlers = {"teams": _cmd_teams, "sql": _cmd_sql, "migrate": _cmd_migrate, "status": _cmd_status}
    handlers["squash-overrides"] = _cmd_squash
    if args.cmd == "import":
        from eventpipe.import_cmd import main as import_main

        return import_main(args, settings)
    return handlers[args.cmd](args, settings)


if __name__ == "__main__":
    sys.exit(main())
