"""The run directory's state: ``state.json`` (phase, results, divergences) and the rules for
starting, resuming or overwriting a run in a folder.

:func:`read_state` is the one reader of ``state.json``: the pipeline, the report, compare and
the CLI all go through it, so a missing, truncated or foreign file is the same one-line
:class:`UserError` everywhere. Only rank 0 writes. ``state.json`` is replaced atomically; the
divergences a run met are carried over from state to state so the report can name them after
a resume.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ebcompress.atomic import write_text_atomic
from ebcompress.engine import distributed as dist
from ebcompress.errors import UserError
from ebcompress.run.lock import refuse_if_locked
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import RunResults

PHASES = ("search", "retrain", "finished")
_FIX = "restore it, or start that run afresh with --overwrite"


@dataclass(frozen=True)
class RunState:
    """``state.json``: the phase a run reached (``status``), its results once finished, and
    the divergences it met (newest last). ``updated`` is set by :func:`write_state`."""

    status: str
    method: str | None = None
    results: RunResults | None = None
    divergences: tuple[str, ...] = ()
    updated: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.method is not None:
            out["method"] = self.method
        if self.results is not None:
            out["results"] = self.results.to_dict()
        if self.divergences:
            out["divergences"] = list(self.divergences)
        if self.updated is not None:
            out["updated"] = self.updated
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        """KeyError, TypeError or ValueError when ``data`` is not a run state."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a JSON object was expected, not {type(data).__name__}")
        status = data["status"]
        if status not in PHASES:
            raise ValueError(f"status {status!r} is none of {', '.join(PHASES)}")
        divergences = data.get("divergences") or []
        if not isinstance(divergences, list):
            raise TypeError("divergences is not a list")
        results = data.get("results")
        return cls(
            status=status,
            method=None if data.get("method") is None else str(data["method"]),
            results=None if results is None else RunResults.from_dict(results),
            divergences=tuple(str(d) for d in divergences),
            updated=None if data.get("updated") is None else str(data["updated"]),
        )


def read_state(run_dir: str | Path) -> RunState:
    """The state of the run in ``run_dir``; UserError (one line naming the file and the fix)
    when the folder or its ``state.json`` is missing, unreadable or not a run state."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{str(run_dir)!r} does not exist; give a run directory (runs/NAME)")
    state = existing_state(run_dir)
    if state is None:
        raise UserError(
            f"{str(run_dir)!r} holds no ebcompress run (no state.json); give a run directory "
            "that `ebcompress prune` wrote"
        )
    return state


def existing_state(run_dir: str | Path) -> RunState | None:
    """As :func:`read_state`, but None when there is no ``state.json`` (a run not yet started)."""
    path = RunPaths(run_dir).state
    if not path.is_file():
        return None
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where!r} is not valid JSON (line {exc.lineno}); {_FIX}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where!r} is unreadable ({exc}); {_FIX}") from None
    try:
        return RunState.from_dict(data)
    except KeyError as exc:
        raise UserError(f"{where!r} is not a run state (no {exc}); {_FIX}") from None
    except (TypeError, ValueError, AttributeError, UserError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{where!r} is not a run state ({reason}); {_FIX}") from None


def write_state(run_dir: Path, state: RunState) -> None:
    """Replace ``state.json`` atomically (rank 0 only), stamping ``updated``; the divergences
    recorded so far are carried over when ``state`` names none."""
    if not dist.is_main():
        return
    if not state.divergences:
        previous = existing_state(run_dir)
        if previous is not None:
            state = replace(state, divergences=previous.divergences)
    state = replace(state, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_text_atomic(RunPaths(run_dir).state, json.dumps(state.to_dict(), indent=1) + "\n")


def record_divergence(run_dir: Path, message: str) -> None:
    """Keep a diverged phase's message in state.json: the report names it after a resume."""
    state = existing_state(run_dir) or RunState(status="search")
    write_state(run_dir, replace(state, divergences=(*state.divergences, message)))


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that a run may start (or resume) in ``run_dir`` and create it; ``overwrite``
    deletes what is there first (even an unreadable run), unless a live process holds it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {str(run_dir)!r} is a file, not a folder; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        refuse_if_locked(run_dir)  # a second writer hears of the first whatever its flags
        if overwrite:
            shutil.rmtree(run_dir)
        else:
            _refuse_unless_resumable(run_dir, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create --out {str(run_dir)!r} ({exc.strerror or exc}); choose another --out"
        ) from None


def _refuse_unless_resumable(run_dir: Path, *, resume: bool) -> None:
    paths = RunPaths(run_dir)
    state = existing_state(run_dir)
    # a run killed before it wrote recipe.yaml leaves only its lock
    if state is None and not (paths.recipe.exists() or paths.lock.exists()):
        raise UserError(
            f"--out {str(run_dir)!r} is a non-empty folder that holds no ebcompress run; "
            "choose another --out"
        )
    if state is not None and state.finished and not resume:
        raise UserError(
            f"{str(run_dir)!r} already holds a finished run; use --overwrite or another --out"
        )
    if not resume:
        raise UserError(
            f"{str(run_dir)!r} holds an unfinished run; continue it with --resume "
            "or start afresh with --overwrite"
        )
