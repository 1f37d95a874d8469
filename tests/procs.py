"""What a test or a measurement reads about processes from /proc."""

from __future__ import annotations

from pathlib import Path


def _status_kib(pid: int, field: str, missing_ok: bool) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        if missing_ok:
            return 0
        raise
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int, missing_ok: bool = False) -> int:
    """The process's peak resident set (VmHWM), KiB. A process that is gone raises (a test must not
    pass on a process that died), unless ``missing_ok`` (then 0: a worker a measurement saw exit)."""
    return _status_kib(pid, "VmHWM", missing_ok)


def rss_kib(pid: int, missing_ok: bool = False) -> int:
    """The process's resident set now (VmRSS), KiB; gone: raises, or 0 with ``missing_ok``."""
    return _status_kib(pid, "VmRSS", missing_ok)


def descendants(pid: int) -> list[int]:
    """Every descendant (the gateway's decode workers are children of its forkserver, a child of it)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out
