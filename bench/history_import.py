"""``python -m bench.history_import [--lines N]``: ``eventpipe import`` of a generated export, interrupted once.

Starts a stack (tests/stack.py), writes an N-line JSONL export (half PostHog batch-export rows with their
uuid, half capture-shaped events without one), runs ``eventpipe import``, sends it SIGINT once its
progress shows ``--interrupt-at`` of the events sent, runs it again to resume, and waits until
``count() FROM events FINAL`` and ``uniqExact(uuid)`` reach N. Prints the import's progress lines, its
summaries, the wall times (import, until all stored) and the rates. Figures only.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.stack import ROOT, Stack


def write_export(path: Path, lines: int) -> None:
    with path.open("w") as f:
        for i in range(lines):
            ts = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{i % 60:02d}.{i % 1_000_000:06d}"
            if i % 2:
                props = json.dumps({"$current_url": f"https://x.test/{i % 500}", "$lib": "web"})
                uid = f"0190b4a2-0000-7000-8000-{i:012d}"
                row = {"uuid": uid, "event": "$pageview", "distinct_id": f"u{i % 20000}", "team_id": 1,
                       "timestamp": ts, "created_at": ts, "elements": '""', "set": "", "set_once": "",
                       "properties": props}  # fmt: skip
            else:
                row = {"event": "signed_up", "distinct_id": f"u{i % 20_000}", "timestamp": ts.replace(" ", "T") + "Z",
                       "properties": {"plan": "free", "n": i}}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def run_import(stack: Stack, args: list[str], interrupt_at: int | None) -> tuple[int, str, list[str], float]:
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventpipe.cli", "import", *args, "--json"],
        env=stack.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    progress = []
    for line in proc.stderr:
        progress.append(line.rstrip())
        print(f"   {line.rstrip()}", flush=True)
        if interrupt_at is not None and " events sent" in line:
            sent = int(line.split(" events sent")[0].rsplit(" ", 1)[-1].replace(",", ""))
            if sent >= interrupt_at:
                proc.send_signal(signal.SIGINT)
                interrupt_at = None
    out = proc.stdout.read()
    return proc.wait(), out, progress, time.monotonic() - began


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.history_import")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--interrupt-at", type=float, default=0.4, help="fraction of the events sent")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export.jsonl"
        t = time.monotonic()
        write_export(export, a.lines)
        print(
            f"export: {a.lines:,} lines, {export.stat().st_size / 1e6:,.0f} MB, written in {time.monotonic() - t:.0f} s"
        )
        stack = Stack(Path(tmp))
        try:
            stack.start()
            team = stack.team("import-bench")
            client = stack.clickhouse_client()
            began = time.monotonic()
            print("first run (interrupted):")
            rc1, out1, _, s1 = run_import(
                stack, [str(export), "--api-key", team.api_key], int(a.lines * a.interrupt_at)
            )
            print(f"   exit {rc1} after {s1:.1f} s: {out1.strip()[:300]}")
            print("second run (resumed):")
            rc2, out2, _, s2 = run_import(stack, [str(export), "--api-key", team.api_key], None)
            imported = time.monotonic() - began
            print(f"   exit {rc2} after {s2:.1f} s: {out2.strip()[:300]}")
            query = f"SELECT count(), uniqExact(uuid) FROM events FINAL WHERE team_id = {team.team_id}"
            while True:
                n, u = client.execute(query)[0]
                if n >= a.lines or time.monotonic() - began > 3600:
                    break
                time.sleep(2)
            stored = time.monotonic() - began
            raw = client.execute(f"SELECT count() FROM events WHERE team_id = {team.team_id}")[0][0]
            print(f"\nstored: count() FINAL {n:,}, uniqExact(uuid) {u:,}, rows before merging {raw:,}")
            print(f"import wall time {imported:.1f} s (both runs, {a.lines / imported:,.0f} events/s); "
                  f"all stored {stored:.1f} s after the first start ({a.lines / stored:,.0f} events/s)")  # fmt: skip
            client.disconnect()
        finally:
            stack.close()


if __name__ == "__main__":
    main()
