"""Sharing one embedded chDB directory between processes.

chDB allows one process per data directory. The process that opens it (the sink, in ``make run``)
takes an exclusive ``flock`` on ``<dir>.lock`` and serves a small loopback-only admin endpoint whose
address and random secret it writes to ``<dir>.owner.json`` (mode 0600). ``eventpipe sql`` and
``eventpipe migrate`` read that file and send their statement there; with no owner running they take
the lock and open the directory themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ujson


def lock_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".lock")


def owner_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".owner.json")


class DirectoryBusy(RuntimeError):
    pass


class DirLock:
    """Exclusive, process-lifetime lock on a chDB directory (released by the kernel if we die)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = lock_path(data_dir)
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise DirectoryBusy(f"another process holds {self.path}") from None
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass(frozen=True)
class OwnerInfo:
    pid: int
    url: str
    secret: str

    @classmethod
    def read(cls, data_dir: Path) -> OwnerInfo | None:
        path = owner_path(data_dir)
        try:
            obj: dict[str, Any] = ujson.loads(path.read_text())
            info = cls(int(obj["pid"]), str(obj["url"]), str(obj["secret"]))
        except (OSError, ValueError, KeyError):
            return None
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return None  # a stale file from a process that died
        except PermissionError:
            pass
        return info

    def write(self, data_dir: Path) -> None:
        path = owner_path(data_dir)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(ujson.dumps({"pid": self.pid, "url": self.url, "secret": self.secret}))
        os.replace(tmp, path)

    @staticmethod
    def remove(data_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            owner_path(data_dir).unlink()


def new_secret() -> str:
    return secrets.token_urlsafe(32)
