"""The run lock: one run at a time writes a results group (a lock file beside it names the holder)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

from dzspec.errors import StoreError

__all__ = ["run_lock"]


@contextlib.contextmanager
def run_lock(store: str | PathLike[str], results: str) -> Iterator[Path | None]:
    """Hold ``<store>/<results>.lock`` while a run writes ``results``, so that a second run started on the same
    output refuses instead of interleaving writes with the first.

    The lock file names the host and process. A lock left by a process of this host that no longer exists (a
    killed run) is taken over, so ``--resume`` after a SIGKILL just works; a live holder, or one on another host,
    is a :class:`StoreError` naming it and the file to remove if that run is really gone. Stores that are not
    local directories (object stores) are not locked (None is yielded).
    """
    root = Path(str(store))
    if not root.is_dir():
        yield None
        return
    path = root / f"{results}.lock"
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = _create_exclusive(path)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == mine["host"] and not _pid_alive(int(holder.get("pid", -1))):
                path.unlink(missing_ok=True)  # its run was killed: take over
                continue
            raise StoreError(f"{root}/{results} is being written by another run ({holder or 'unknown holder'}); "
                             f"wait for it, or remove {path} if that run is gone") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        break
    else:  # pragma: no cover - a third run raced us between the unlink and the create
        raise StoreError(f"{root}/{results}: could not take the run lock {path}")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _create_exclusive(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise
    except OSError as exc:  # a read-only or full output location fails here, before any work
        raise StoreError(f"cannot take the run lock {path}: {exc.strerror or exc}; the output location must be "
                         "writable") from exc


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
