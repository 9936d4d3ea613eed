"""Atomic file replacement: a reader sees a file's old content or its new, never half of it.

Every file of a run directory, a bundle or a checkpoint is written through here, so a kill,
a preemption or a full disk in the middle of a write leaves the previous good file in place.
The new content goes to a temporary sibling (unique per process, so two writers never share
one), is flushed to disk, and is renamed over the target; on any error the sibling is removed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends normally, the file written
    there replaces ``path`` (fsynced first). On an exception the temporary file is removed,
    ``path`` is untouched, and the exception propagates.

    ``keep_suffix`` makes the temporary name end in ``path``'s suffix, for writers that insist
    on it (``torch.export.save`` wants ``.pt2``); otherwise it ends in ``.tmp<pid>``, so that
    no glob for the real files' suffix picks up a temporary file a kill left behind."""
    path = Path(path)
    stem, suffix = (path.stem, path.suffix) if keep_suffix else (path.name, "")
    # Unique per process and thread, so two writers never share a temporary file.
    tmp = path.with_name(f".{stem}.tmp{os.getpid()}-{threading.get_ident()}{suffix}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see :func:`atomic_path`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush ``path``'s content to the disk (a writer that must know its data is durable before
    it moves other files, as the checkpoint rotation does)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; some file systems refuse to open a directory, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
