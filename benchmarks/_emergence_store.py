"""The resumable files of benchmarks/eb_emergence.py: dense snapshots and the results JSON.

A seed's dense search keeps its weights and tickets at the draw epochs; they go to
``--runs/seed<k>/`` (safetensors and JSON, each written atomically) and their sha256 into the
results JSON, so a later session retrains the missing tickets from exactly those files (no
pickle: safetensors and JSON only) or says which one is missing or changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from ebcompress.atomic import atomic_path, write_text_atomic
from ebcompress.channels.ticket import Ticket
from ebcompress.errors import UserError
from ebcompress.recipe import validate_recipe

FORMAT = 2  # results layout: 1 was one seed (no "format" key), 2 is {"runs": {seed: ...}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_snapshots(
    folder: Path,
    states: dict[int, dict[str, Tensor]],
    tickets: dict[int, dict[float, Ticket]],
) -> dict[str, str]:
    """Write the dense weights per epoch (safetensors) and the tickets per epoch and ratio
    (JSON) into ``folder``, each atomically; ``{file name: sha256}``, which the results JSON
    keeps to check them on a resume."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for epoch, state in states.items():
        path = folder / f"epoch{epoch}.safetensors"
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        files[path.name] = _sha256(path)
    raw = {
        str(e): {str(r): t.to_dict() for r, t in by_ratio.items()}
        for e, by_ratio in tickets.items()
    }
    path = folder / "tickets.json"
    write_text_atomic(path, json.dumps(raw) + "\n")
    files[path.name] = _sha256(path)
    return files


def load_snapshots(
    folder: Path, files: dict[str, str]
) -> tuple[dict[int, dict[str, Tensor]], dict[int, dict[float, Ticket]]]:
    """What :func:`save_snapshots` wrote, each file checked against its recorded sha256."""
    for name, digest in files.items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise UserError(
                f"{folder / name} is missing or not the file the search wrote; pass the --runs "
                "folder of the first session, or --fresh to start over"
            )
    states = {
        int(name[len("epoch") : -len(".safetensors")]): load_file(str(folder / name))
        for name in files
        if name.endswith(".safetensors")
    }
    raw = json.loads((folder / "tickets.json").read_text(encoding="utf-8"))
    tickets = {
        int(e): {float(r): Ticket.from_dict(t) for r, t in by_ratio.items()}
        for e, by_ratio in raw.items()
    }
    return states, tickets


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(old.keys() | new.keys())
            for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)
        ]
    return [] if old == new else [where]


def _current_schema(config: Any) -> Any:
    """An earlier session's config with its recipe read through today's schema: a recipe
    field added since then takes its default, which reproduces the old behaviour, so it is
    not a difference (a removed or retyped field still is, as a UserError)."""
    if not isinstance(config, dict) or not isinstance(config.get("recipe"), dict):
        return config
    recipe = validate_recipe(config["recipe"], "the results file's config.recipe").to_dict()
    recipe.pop("seed", None)  # each run keeps its own seed
    return {**config, "recipe": json.loads(json.dumps(recipe))}


def open_results(path: Path, config: dict[str, Any], fresh: bool) -> dict[str, Any] | None:
    """The finished part of an earlier session, or None to start over (no file, or
    ``fresh``). A file of another layout or config is a UserError naming the fix."""
    if fresh or not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); move it aside or pass --fresh") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise UserError(
            f"{path} was written by the single-seed eb_emergence.py; move it aside, choose "
            "another --stem, or pass --fresh to overwrite it"
        )
    changed = _differences(_current_schema(old.get("config")), json.loads(json.dumps(config)))
    if changed:
        raise UserError(
            f"{path} holds runs of another config ({', '.join(changed[:5])} differ); choose "
            "another --stem, or pass --fresh to start over"
        )
    return old


def merge_and_write(
    path: Path,
    result: dict[str, Any],
    record: dict[str, Any] | None,
    on_merged: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Write this session's seeds into the results file without losing another session's.

    Sessions may run side by side, one seed each (``--seeds 1`` and ``--seeds 2`` on two
    cores). A session owns the seeds it has started (``record["active"]``). Under an
    exclusive lock the file on disk is read again, and ``result`` takes from it, in place
    (callers hold references into it), the runs of every seed it does not own and the other
    sessions' records; ``on_merged(result)`` then runs (the summary, the page), still under
    the lock, and the file is written back atomically. A file of another config is refused.
    The wall time is the sum over sessions: the compute spent, not the span of overlapping
    sessions. ``record`` None (a redraw of the page) owns no seed and adds no session.
    """
    owned = {str(s) for s in record.get("active", [])} if record else set()
    with open(path.with_suffix(".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.is_file():
            disk = json.loads(path.read_text(encoding="utf-8"))
            ours = _current_schema(json.loads(json.dumps(result["config"])))
            if _differences(_current_schema(disk.get("config")), ours):
                raise UserError(
                    f"{path} was rewritten by a session of another config; give this one "
                    "its own --stem"
                )
            for seed, run in disk.get("runs", {}).items():
                if seed not in owned:
                    result["runs"][seed] = run
            result["seeds"] = [
                *disk.get("seeds", []),
                *(s for s in result["seeds"] if s not in disk.get("seeds", [])),
            ]
            others = [
                s for s in disk.get("sessions", []) if not record or s.get("id") != record["id"]
            ]
            result["sessions"][:] = [*others, *([record] if record else [])]
        result["wall_seconds"] = sum(s.get("wall_seconds", 0.0) for s in result["sessions"])
        if on_merged is not None:
            on_merged(result)
        write_text_atomic(path, json.dumps(result, indent=1) + "\n")


def set_aside(path: Path) -> Path | None:
    """Move an earlier results file out of the way (``--fresh``): renamed beside itself with
    the time, never deleted. The new name, or None when there was no file."""
    if not path.is_file():
        return None
    aside = path.with_name(f"{path.stem}.replaced-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
    path.replace(aside)
    return aside
