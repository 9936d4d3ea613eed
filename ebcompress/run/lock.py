"""One writer per run directory, held with an OS lock on ``run.lock``.

The lock is ``fcntl.flock`` on the open file: the kernel releases it when its process ends,
however it ends (SIGKILL, a container restart), so a dead run never blocks a new one, and a
pid written into the file proves nothing — a reused pid cannot fake a lock. The file holds the
holder's pid and host only so that a refused writer can be told who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ebcompress.errors import UserError
from ebcompress.run.paths import RunPaths


def lock_holder(run_dir: Path) -> str | None:
    """``"pid N on HOST"`` when a live process holds the run's lock, else None."""
    path = RunPaths(run_dir).lock
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; never creates it
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def refuse_if_locked(run_dir: Path) -> None:
    """UserError naming the holder when another process writes ``run_dir``."""
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UserError(
            f"another ebcompress process ({holder}) is writing {str(run_dir)!r}; "
            "wait for it or choose another --out"
        )


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the body; a second writer gets a UserError naming the holder.

    The file is removed on the way out while still locked; a writer that opened it just before
    then finds it unlinked and tries again on the new file (the inode check), so two writers
    never both believe they hold it.
    """
    path = RunPaths(run_dir).lock
    for _ in range(8):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise UserError(
                f"another ebcompress process ({holder}) is writing {str(run_dir)!r}; "
                "wait for it or choose another --out"
            ) from None
        if _same_file(handle, path):
            break
        handle.close()  # it was unlinked by the previous holder between open and flock
    else:
        raise UserError(f"could not lock {str(path)!r}; is another process recreating it?")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _describe(text: str) -> str:
    parts = text.split()
    if not parts:
        return "a process starting up"
    return f"pid {parts[0]}" + (f" on {parts[1]}" if len(parts) > 1 else "")
