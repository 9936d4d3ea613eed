"""The run's ``metrics.jsonl``: one JSON object per line, one line per epoch and phase.

Lines are appended as epochs finish. A phase that resumes from its checkpoint first drops its
own lines after the checkpoint's epoch (written before a crash that lost the checkpoint), so
the file never holds an epoch twice; a torn last line is dropped too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ebcompress.atomic import write_text_atomic


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_entries(path: Path) -> list[dict[str, Any]]:
    """All complete lines of ``path`` (none when it does not exist)."""
    if not Path(path).is_file():
        return []
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def truncate_phase(path: Path, phase: str, keep_through: int) -> None:
    """Drop ``phase``'s lines with epoch > ``keep_through`` (and torn lines), atomically."""
    if not Path(path).is_file():
        return
    kept = [
        entry
        for entry in read_entries(path)
        if entry.get("phase") != phase or entry.get("epoch", 0) <= keep_through
    ]
    write_text_atomic(path, "".join(json.dumps(entry) + "\n" for entry in kept))


def copy_phase(source: Path, target: Path, phase: str, through_epoch: int | None = None) -> None:
    """Give ``target`` the lines ``source`` holds of ``phase`` (up to ``through_epoch``), in
    place of its own and before its other phases' lines (a run whose search phase was trained
    in a folder it shares with others)."""
    copied = [
        entry
        for entry in read_entries(source)
        if entry.get("phase") == phase
        and (through_epoch is None or entry.get("epoch", 0) <= through_epoch)
    ]
    kept = [entry for entry in read_entries(target) if entry.get("phase") != phase]
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, "".join(json.dumps(entry) + "\n" for entry in [*copied, *kept]))
