"""The harness behind benchmarks/fault_injection.py and tests/run/test_reliability.py: start
``ebcompress prune`` (the quickstart recipe cut to seconds, one thread) in a subprocess, watch
its run directory, signal it at a chosen moment, and compare two finished runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _faults  # noqa: E402

# The quickstart recipe cut to a few seconds of training: the ticket emerges at epoch 3 of 6.
QUICK_OVERRIDES: tuple[str, ...] = (
    "train.epochs=6",
    "train.milestones=[3,5]",
    "data.train_subset=256",
    "data.test_subset=128",
    "prune.window=2",
)
# One intra-op thread: the reduction order, and so every bit of the result, is then fixed.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Measured or wall-clock quantities, which differ between any two runs.
UNSTABLE_KEYS = frozenset({"timing", "seconds", "images_per_s", "joules", "total_joules"})


def prune_argv(
    run_dir: Path, *, resume: bool, overrides: Sequence[str] = QUICK_OVERRIDES
) -> list[str]:
    """The ``ebcompress prune`` argument list (without the interpreter) for one run."""
    sets = [arg for pair in overrides for arg in ("--set", pair)]
    return [
        "prune", "--recipe", "quickstart", "--out", str(run_dir), "--device", "cpu", *sets,
        *(["--resume"] if resume else []),
    ]  # fmt: skip


def start_prune(
    run_dir: Path,
    *,
    resume: bool,
    stdout: Path,
    stderr: Path | None = None,
    overrides: Sequence[str] = QUICK_OVERRIDES,
    fault: tuple[str, int] | tuple[str, int, signal.Signals] | None = None,
) -> subprocess.Popen:
    """Start ``python -m ebcompress prune`` in a subprocess, appending its output to files
        (stderr to ``stdout`` too when ``stderr`` is None). ``fault=(point, n)`` arms one of
        ``_faults.POINTS``: the process SIGKILLs itself at the n-th such event (or sends itself
    the signal given third)."""
    env = {**os.environ, **SINGLE_THREAD_ENV}
    argv = prune_argv(run_dir, resume=resume, overrides=overrides)
    command = [sys.executable, "-m", "ebcompress", *argv]
    if fault is not None:
        command = _faults.fault_command(fault[0], fault[1], argv, *fault[2:])
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(stdout, "ab"))
        err = subprocess.STDOUT if stderr is None else files.enter_context(open(stderr, "ab"))
        return subprocess.Popen(command, stdout=out, stderr=err, env=env)


@dataclass(frozen=True)
class RunProgress:
    """What a run directory shows of a run's progress, read from its files."""

    started: bool  # recipe.yaml written: the run is past imports and the lock
    search_epochs: int  # search lines in metrics.jsonl
    ticket: bool
    retrain_epochs: int
    exported: bool  # model/ exists: the retrain is over (or a killed export left it)
    finished: bool  # state.json says finished (the report may still be being written)
    report: bool

    @property
    def phase(self) -> str:
        """Where a run with this progress is: a coarse name for reports."""
        if not self.started:
            return "startup"
        if self.report:
            return "done"
        if self.finished:
            return "report"
        if self.exported:
            return "export"
        if self.retrain_epochs:
            return "retrain"
        if self.ticket:
            return "slimming"  # or the retrain's first epoch
        return "search"


def read_progress(run_dir: Path) -> RunProgress:
    """A snapshot of ``run_dir``; safe to call while a run writes it."""
    counts = {"search": 0, "retrain": 0}
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
    for line in lines:
        try:
            phase = json.loads(line).get("phase")
        except json.JSONDecodeError:
            continue  # a line being written
        if phase in counts:
            counts[phase] += 1
    try:
        status = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))["status"]
    except (OSError, ValueError, KeyError):
        status = None
    return RunProgress(
        started=(run_dir / "recipe.yaml").is_file(),
        search_epochs=counts["search"],
        ticket=(run_dir / "ticket.json").is_file(),
        retrain_epochs=counts["retrain"],
        exported=(run_dir / "model").is_dir(),
        finished=status == "finished",
        report=(run_dir / "report.json").is_file(),
    )


def wait_for(
    process: subprocess.Popen,
    run_dir: Path,
    condition: Callable[[RunProgress], bool],
    *,
    timeout: float = 300.0,
    poll_s: float = 0.005,
) -> RunProgress | None:
    """Poll ``run_dir`` until ``condition(progress)`` holds and return that progress; None
    when the process exits first. TimeoutError (the process killed) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        progress = read_progress(run_dir)
        if condition(progress):
            return progress
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"{run_dir}: condition not reached within {timeout:.0f}s")
        time.sleep(poll_s)
    return None


def kill_when(
    process: subprocess.Popen,
    run_dir: Path,
    condition: Callable[[RunProgress], bool],
    sig: signal.Signals = signal.SIGKILL,
) -> RunProgress | None:
    """Send ``sig`` to ``process`` as soon as ``condition`` holds (see :func:`wait_for`); the
    progress at the signal, or None when the process exited first. The process is reaped, so
    the run's lock file names a pid that no longer exists."""
    progress = wait_for(process, run_dir, condition)
    if progress is not None:
        process.send_signal(sig)
    process.wait()
    return progress


def lock_holder(run_dir: Path) -> int | None:
    """The pid in the run's lock file (a live or a killed run's), or None."""
    try:
        return int((run_dir / "run.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_after(
    process: subprocess.Popen,
    run_dir: Path,
    seconds: float,
    sig: signal.Signals = signal.SIGKILL,
) -> RunProgress | None:
    """Send ``sig`` ``seconds`` after ``process`` took the run's lock (None: it exited first).

    Counting from the lock skips the interpreter's start and the imports, where a kill
    tests nothing.
    """
    locked_at: list[float] = []

    def due(_: RunProgress) -> bool:
        if not locked_at and lock_holder(run_dir) == process.pid:
            locked_at.append(time.monotonic())
        return bool(locked_at) and time.monotonic() - locked_at[0] >= seconds

    return kill_when(process, run_dir, due, sig)


def comparable_result(run_dir: Path) -> dict[str, Any]:
    """ticket.json, the model's tensors and report.json without wall-clock/measured fields."""
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    return {
        "ticket": json.loads((run_dir / "ticket.json").read_text(encoding="utf-8")),
        "weights": load_file(str(run_dir / "model" / "model.safetensors")),
        "report": _without_unstable(report),
    }


def _without_unstable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_unstable(v) for k, v in value.items() if k not in UNSTABLE_KEYS}
    if isinstance(value, list):
        return [_without_unstable(v) for v in value]
    return value


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """What differs between two :func:`comparable_result` values (empty when identical)."""
    found = [name for name in ("ticket", "report") if expected[name] != actual[name]]
    weights_a, weights_b = expected["weights"], actual["weights"]
    if weights_a.keys() != weights_b.keys():
        found.append("weights: tensor names")
    else:
        found += [f"weights: {k}" for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    return found
