"""The run directory's state: ``state.json`` (phase, results, divergences) and the rules for
starting, resuming or overwriting a run in a folder.

Only rank 0 writes. ``state.json`` is replaced atomically; the divergences a run met are
carried over from state to state so the report can name them after a resume.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ebcompress.engine import distributed as dist
from ebcompress.errors import UserError
from ebcompress.run.lock import LOCK_FILE, refuse_if_locked

STATE_FILE = "state.json"


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {str(run_dir)!r} is a file, not a folder; choose another --out")
    state = read_state(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        refuse_if_locked(run_dir)  # a second writer hears of the first whatever its flags
        if overwrite:
            shutil.rmtree(run_dir)
        elif state is None and not any(
            (run_dir / name).exists() for name in ("recipe.yaml", LOCK_FILE)
        ):  # a run killed before it wrote recipe.yaml leaves only its lock
            raise UserError(
                f"--out {str(run_dir)!r} is a non-empty folder that holds no ebcompress run; "
                "choose another --out"
            )
        elif is_finished(state) and not resume:
            raise UserError(
                f"{str(run_dir)!r} already holds a finished run; use --overwrite or another --out"
            )
        elif not resume:
            raise UserError(
                f"{str(run_dir)!r} holds an unfinished run; continue it with --resume "
                "or start afresh with --overwrite"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create --out {str(run_dir)!r} ({exc.strerror or exc}); choose another --out"
        ) from None


def read_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def is_finished(state: dict[str, Any] | None) -> bool:
    return state is not None and state.get("status") == "finished"


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace state.json atomically; the divergences recorded so far are carried over."""
    if not dist.is_main():
        return
    divergences = (read_state(run_dir) or {}).get("divergences")
    if divergences and "divergences" not in state:
        state = {**state, "divergences": divergences}
    state = {**state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / STATE_FILE)


def record_divergence(run_dir: Path, message: str) -> None:
    """Keep a diverged phase's message in state.json: the report names it after a resume."""
    state = read_state(run_dir) or {"status": "search"}
    write_state(run_dir, {**state, "divergences": [*state.get("divergences", []), message]})
