"""Kill ``ebcompress prune`` at random points, resume it, and check the result is unchanged.

Each cycle starts the quickstart recipe (shortened, one thread) in a fresh run directory,
SIGKILLs it at a random moment, resumes it with ``--resume`` (killing the resumed process
too, at another random moment, for ``--kills`` kills per cycle), lets the last resume finish,
and compares the run's ticket.json, model weights and report.json (wall-clock and measured
energy fields aside) with those of an uninterrupted run. Kill moments are drawn uniformly
over the active part of an uninterrupted run (from taking the run's lock to the exit),
seeded, so the kills land in the search, the slimming, the retrain, the export and the
report. Target: every cycle resumes to an identical result. Results go to
``benchmarks/results/fault_injection.{json,md}``.

    python benchmarks/fault_injection.py --cycles 5 --seed 0

tests/test_reliability.py imports the harness below (start, kill, compare) from this file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

RESULTS = Path(__file__).resolve().parent / "results"

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
) -> subprocess.Popen:
    """Start ``python -m ebcompress prune`` in a subprocess, appending its output to files
    (stderr to ``stdout`` too when ``stderr`` is None)."""
    env = {**os.environ, **SINGLE_THREAD_ENV}
    argv = prune_argv(run_dir, resume=resume, overrides=overrides)
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(stdout, "ab"))
        err = subprocess.STDOUT if stderr is None else files.enter_context(open(stderr, "ab"))
        return subprocess.Popen(
            [sys.executable, "-m", "ebcompress", *argv], stdout=out, stderr=err, env=env
        )


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
    process: subprocess.Popen, run_dir: Path, condition: Callable[[RunProgress], bool]
) -> RunProgress | None:
    """SIGKILL ``process`` as soon as ``condition`` holds (see :func:`wait_for`); the progress
    at the kill, or None when the process exited first. The process is reaped, so the run's
    lock file names a pid that no longer exists."""
    progress = wait_for(process, run_dir, condition)
    if progress is not None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return progress


def lock_holder(run_dir: Path) -> int | None:
    """The pid in the run's lock file (a live or a killed run's), or None."""
    try:
        return int((run_dir / "run.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_after(process: subprocess.Popen, run_dir: Path, seconds: float) -> RunProgress | None:
    """SIGKILL ``process`` ``seconds`` after it took the run's lock (None: it exited first).

    Counting from the lock skips the interpreter's start and the imports, where a kill
    tests nothing.
    """
    locked_at: list[float] = []

    def due(_: RunProgress) -> bool:
        if not locked_at and lock_holder(run_dir) == process.pid:
            locked_at.append(time.monotonic())
        return bool(locked_at) and time.monotonic() - locked_at[0] >= seconds

    return kill_when(process, run_dir, due)


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


# ----------------------------------------------------------------------------- the benchmark


def active_seconds(process: subprocess.Popen, run_dir: Path) -> float:
    """Wait for ``process``; the seconds from when it took the run's lock until it exited."""
    locked_at = None
    while process.poll() is None:
        if locked_at is None and lock_holder(run_dir) == process.pid:
            locked_at = time.monotonic()
        time.sleep(0.01)
    if process.returncode != 0 or locked_at is None:
        raise RuntimeError(f"the uninterrupted run in {run_dir} failed (exit {process.returncode})")
    return time.monotonic() - locked_at


@dataclass
class Cycle:
    """One kill-and-resume cycle: where each kill landed and whether the result matched."""

    index: int
    kills: list[dict[str, Any]]
    final_exit: int
    identical: bool
    differences: list[str]
    seconds: float


def run_cycle(
    index: int,
    root: Path,
    reference: dict[str, Any],
    window_s: float,
    kills: int,
    rng: random.Random,
) -> Cycle:
    """Kill a fresh run ``kills`` times at random moments in ``[0, window_s)`` after it (or
    its resume) took the lock, then resume it to the end and compare with ``reference``."""
    run_dir, log = root / f"cycle{index}", root / f"cycle{index}.log"
    started = time.monotonic()
    landed = []
    for attempt in range(kills):
        delay = rng.uniform(0.0, window_s)
        process = start_prune(run_dir, resume=attempt > 0, stdout=log)
        at = kill_after(process, run_dir, delay)
        landed.append(
            {"after_s": round(delay, 3), "phase": at.phase if at else "exited before the kill"}
        )
    final = start_prune(run_dir, resume=True, stdout=log)
    final_exit = final.wait()
    found = (
        differences(reference, comparable_result(run_dir))
        if final_exit == 0
        else [f"the last resume exited with {final_exit}; see {log}"]
    )
    return Cycle(index, landed, final_exit, not found, found, time.monotonic() - started)


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": int(SINGLE_THREAD_ENV["OMP_NUM_THREADS"]),
    }


def render_markdown(result: dict[str, Any]) -> str:
    m, summary = result["machine"], result["summary"]
    lines = [
        "# Fault injection: kill `ebcompress prune` anywhere, resume, compare",
        "",
        f"Measured {m['date']} on {m['platform']} ({m['processor']}, {m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch thread), torch {m['torch']}.",
        "",
        f"Recipe: quickstart with `{' '.join(result['overrides'])}`; "
        f"{result['kills_per_cycle']} SIGKILL(s) per cycle at moments drawn uniformly from "
        f"[0, {result['window_s']:.1f} s) after the process took the run's lock (the "
        "uninterrupted run's active time), then `--resume` to the end. Seed "
        f"{result['seed']}.",
        "",
        f"**{summary['identical']} of {summary['cycles']} cycles resumed to a result identical "
        "to the uninterrupted run** (ticket.json, every tensor of model.safetensors, and "
        "report.json without its wall-clock and energy fields). Target: all of them.",
        "",
        "| cycle | kills landed in (after s) | last resume exit | identical | seconds |",
        "|---:|---|---:|:---:|---:|",
    ]
    for cycle in result["cycles"]:
        where = ", ".join(f"{k['phase']} ({k['after_s']:.2f})" for k in cycle["kills"])
        mark = "yes" if cycle["identical"] else "NO: " + "; ".join(cycle["differences"][:3])
        lines.append(
            f"| {cycle['index']} | {where} | {cycle['final_exit']} | {mark} | "
            f"{cycle['seconds']:.0f} |"
        )
    phases = ", ".join(f"{phase}: {n}" for phase, n in sorted(summary["kills_by_phase"].items()))
    lines += ["", f"Kills by phase: {phases}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per cycle before the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        reference_dir = root / "reference"
        process = start_prune(reference_dir, resume=False, stdout=root / "reference.log")
        window_s = active_seconds(process, reference_dir)
        reference = comparable_result(reference_dir)
        print(f"uninterrupted run: {window_s:.1f} s after taking the lock", flush=True)
        cycles = []
        for index in range(1, args.cycles + 1):
            cycle = run_cycle(index, root, reference, window_s, args.kills, rng)
            print(
                f"cycle {index}: kills in {[k['phase'] for k in cycle.kills]}, "
                f"identical={cycle.identical} {cycle.differences[:3]}",
                flush=True,
            )
            cycles.append(cycle)

    by_phase: dict[str, int] = {}
    for cycle in cycles:
        for kill in cycle.kills:
            by_phase[kill["phase"]] = by_phase.get(kill["phase"], 0) + 1
    result = {
        "machine": machine(),
        "overrides": list(QUICK_OVERRIDES),
        "seed": args.seed,
        "kills_per_cycle": args.kills,
        "window_s": window_s,
        "summary": {
            "cycles": len(cycles),
            "identical": sum(c.identical for c in cycles),
            "kills_by_phase": by_phase,
        },
        "cycles": [asdict(c) for c in cycles],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fault_injection.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "fault_injection.md").write_text(render_markdown(result))
    identical = result["summary"]["identical"]
    print(f"{identical}/{len(cycles)} identical; wrote {RESULTS}/fault_injection.*")
    return result


if __name__ == "__main__":
    main()
