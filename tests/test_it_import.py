"""eventpipe import through the real stack: interrupted, resumed and repeated, every good event stored once."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack, poll

pytestmark = pytest.mark.integration

GOOD = 4000
BAD_LINES = {
    7: b"not json at all",
    501: b'{"event": "e", "timestamp": "2024-03-01T00:00:00Z"}',  # no distinct_id
    1502: b'{"event": "e", "distinct_id": "u1"}',  # no timestamp
    3003: b'{"event": "e", "distinct_id": "u1", "timestamp": "2024-03-01T00:00:00Z", "uuid": "nope"}',
}


def _export(path: Path) -> None:
    """GOOD events (half PostHog batch-export rows with their uuid, half capture-shaped without) and the
    bad lines at their line numbers, gzip-compressed."""
    lines: list[bytes] = []
    i = 0
    while len(lines) < GOOD + len(BAD_LINES):
        number = len(lines) + 1
        if number in BAD_LINES:
            lines.append(BAD_LINES[number])
            continue
        ts = f"2024-03-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00.{i:06d}"
        if i % 2:
            row = {"uuid": f"0190b4a2-0000-7000-8000-{i:012d}", "event": "$pageview", "distinct_id": f"user-{i % 50}",
                   "team_id": 99, "properties": json.dumps({"$current_url": f"https://x.test/{i}"}), "timestamp": ts,
                   "created_at": ts, "elements": '""', "set": "", "set_once": ""}  # fmt: skip
        else:
            row = {"event": "signed_up", "distinct_id": f"user-{i % 50}", "timestamp": ts.replace(" ", "T") + "Z",
                   "properties": {"n": i}}  # fmt: skip
        lines.append(json.dumps(row).encode())
        i += 1
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))


def _import(stack: Stack, *args: str) -> subprocess.Popen[str]:
    stack.uses_clickhouse = True
    return subprocess.Popen(
        [sys.executable, "-m", "eventpipe.cli", "import", *args, "--json", "--progress-interval", "0.2"],
        env=stack.env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _counts(stack: Stack, team_id: int) -> tuple[int, int, int]:
    [row] = stack.sql(
        f"SELECT count() AS n, uniqExact(uuid) AS u, countIf(timestamp < '2024-04-01') AS old "
        f"FROM events FINAL WHERE team_id = {team_id}"
    )
    return int(row["n"]), int(row["u"]), int(row["old"])


def test_an_export_imports_resumes_after_an_interrupt_and_stores_each_event_once(stack: Stack, tmp_path: Path) -> None:
    team = stack.team("history")
    export = tmp_path / "export.jsonl.gz"
    _export(export)
    args = (str(export), "--api-key", team.api_key)

    # Slowed down so it is interrupted part-way once the progress shows 1,000 events sent: at 300 events/s
    # the other 3,000 take 10 s, room for a test process the loaded machine schedules late (at 1,500/s a
    # fresh-clone CI beside a benchmark saw the import finish before the signal).
    first = _import(stack, *args, "--rate", "300")
    assert first.stderr is not None
    for line in first.stderr:
        if "events sent" in line and int(line.split(" events sent")[0].rsplit(" ", 1)[-1].replace(",", "")) >= 1000:
            break
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    partial = json.loads(out)
    assert partial["interrupted"] and 1000 <= partial["imported"] < GOOD

    second = _import(stack, *args)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "resuming at line" in err
    summary = json.loads(out)
    assert summary["imported"] == GOOD and not summary["interrupted"]
    assert sum(summary["refused"].values()) == len(BAD_LINES)
    assert sorted(line for line, _item, _reason in summary["listed"]) == sorted(BAD_LINES)
    assert summary["refused"] == {
        "invalid_json": 1,
        "invalid_payload (distinct_id)": 1,
        "missing_timestamp": 1,
        "invalid_payload (uuid)": 1,
    }
    # Stored once, with the export's timestamps (all in March 2024), whatever the interrupt re-sent.
    assert poll(lambda: _counts(stack, team.team_id) == (GOOD, GOOD, GOOD), 90, 0.5, "all events stored once")

    again = _import(stack, *args)  # the checkpoint says complete
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and "imported completely" in err
    restarted = _import(stack, *args, "--restart")  # really sends everything again
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    assert json.loads(out)["imported"] == GOOD
    with_late_rows = poll(lambda: _counts(stack, team.team_id), 30, 0.5, "counts")
    assert with_late_rows == (GOOD, GOOD, GOOD)


def test_a_changed_file_is_not_resumed(stack: Stack, tmp_path: Path) -> None:
    team = stack.team("history")
    export = tmp_path / "export.jsonl"
    export.write_text(json.dumps({"event": "e", "distinct_id": "u", "timestamp": "2024-03-01T00:00:00Z"}) + "\n")
    proc = _import(stack, str(export), "--team-id", str(team.team_id))
    assert proc.communicate(timeout=60)[1] is not None and proc.returncode == 0
    checkpoints = list((stack.home / "imports").glob("export.jsonl.team*.json"))
    assert len(checkpoints) == 1
    state = json.loads(checkpoints[0].read_text())
    state["complete"] = False  # as if interrupted, then the file is rewritten
    checkpoints[0].write_text(json.dumps(state))
    export.write_text(export.read_text() * 2)
    proc = _import(stack, str(export), "--team-id", str(team.team_id))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "file changed" in err and "--restart" in err


def test_standard_input_is_imported_without_a_checkpoint(stack: Stack) -> None:
    team = stack.team("history")
    lines = [{"event": "e", "distinct_id": f"u{i}", "timestamp": "2024-03-01T00:00:00Z"} for i in range(50)]
    proc = _import(stack, "-", "--team-id", str(team.team_id))
    out, err = proc.communicate("".join(json.dumps(x) + "\n" for x in lines), timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["imported"] == 50
    assert not (stack.home / "imports").exists()
    assert poll(lambda: _counts(stack, team.team_id) == (50, 50, 50), 60, 0.5, "stdin events stored")
