"""Interrupt ``ebcompress prune`` anywhere, resume it, and check the result is unchanged.

Each cycle starts the quickstart recipe (shortened, one thread; ``_run_harness.py``) in a
fresh run directory, interrupts it, resumes it with ``--resume`` to the end, and compares the
run's ticket.json, model weights and report.json (wall-clock and measured energy fields
aside) with those of an uninterrupted run. After each interruption it also checks that every
phase which had written a checkpoint still has a usable one. Three kinds of cycle:

* ``random``: ``--kills`` signals, each SIGKILL or SIGTERM (drawn), at moments drawn
  uniformly over the active part of an uninterrupted run (from taking the run's lock to the
  exit), seeded, so they land in the search, the slimming, the retrain, the export and the
  report;
* fault points (``_faults.py``): the process SIGKILLs itself at the n-th rename onto a
  checkpoint, a bundle file or a report file, or in the middle of the slimming;
* ``disk_full``: the run directory is a small tmpfs (needs root), filled between two
  checkpoints; the run must stop with one line and resume once space is freed.

Target: every cycle resumes to an identical result with a checkpoint kept. Results go to
``benchmarks/results/fault_injection.{json,md}``, rewritten after every cycle.

    python benchmarks/fault_injection.py --cycles 16 --point-cycles 2 --seed 0
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _faults  # noqa: E402
from _run_harness import (  # noqa: E402
    QUICK_OVERRIDES,
    SINGLE_THREAD_ENV,
    RunProgress,
    comparable_result,
    differences,
    kill_after,
    kill_when,
    lock_holder,
    prune_argv,
    read_progress,
    start_prune,
    wait_for,
)

from ebcompress.engine.checkpoint import load_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The harness, for tests/run/test_reliability.py and tests/engine/test_preemption.py.
__all__ = [
    "QUICK_OVERRIDES", "RunProgress", "comparable_result", "differences", "kill_after",
    "kill_when", "lock_holder", "main", "prune_argv", "read_progress", "start_prune", "wait_for",
]  # fmt: skip

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


def checkpoints_intact(run_dir: Path) -> bool:
    """Every phase that has written a checkpoint still has a usable one (``last.pt``, or
    ``prev.pt`` when the newest was lost mid-rotation)."""
    for folder in (run_dir / "checkpoints").glob("*"):
        if not any(folder.glob("*.pt")):
            continue
        try:
            if load_checkpoint(folder / "last.pt") is None:
                return False
        except Exception:  # a UserError: no usable checkpoint is left
            return False
    return True


@dataclass
class Cycle:
    """One fault-and-resume cycle: what was injected, where it landed, whether the result
    matched and whether a usable checkpoint survived every interruption."""

    index: int
    kind: str  # "random", a fault point, or "disk_full"
    kills: list[dict[str, Any]]
    final_exit: int
    identical: bool
    differences: list[str]
    checkpoints_kept: bool
    seconds: float


def _interrupt(
    run_dir: Path, log: Path, resume: bool, window_s: float, rng: random.Random
) -> dict[str, Any]:
    """Start the run (or its resume) and SIGKILL or SIGTERM it at a random moment."""
    delay, sig = rng.uniform(0.0, window_s), rng.choice([signal.SIGKILL, signal.SIGTERM])
    process = start_prune(run_dir, resume=resume, stdout=log)
    at = kill_after(process, run_dir, delay, sig)
    return {
        "signal": sig.name,
        "after_s": round(delay, 3),
        "phase": at.phase if at else "exited before the kill",
        "exit": process.returncode,
    }


def _fault_point(run_dir: Path, log: Path, point: str, rng: random.Random) -> dict[str, Any]:
    """Run with ``point`` armed at a random occurrence; the process SIGKILLs itself there."""
    nth = rng.randint(1, 4)
    process = start_prune(run_dir, resume=False, stdout=log, fault=(point, nth))
    code = process.wait()
    fired = code == -signal.SIGKILL
    return {
        "signal": "SIGKILL (in-process)",
        "after_s": None,
        "phase": f"{point} #{nth}" if fired else f"{point} #{nth}: never reached",
        "exit": code,
    }


def _disk_full(run_dir: Path, log: Path, checkpoint_bytes: int) -> dict[str, Any]:
    """Fill ``run_dir``'s (small) disk right after the first search checkpoint, so the next
    checkpoint cannot be written; then free the space. The run must stop with one line."""
    process = start_prune(run_dir, resume=False, stdout=log)
    checkpoint = run_dir / "checkpoints" / "search" / "last.pt"
    at = wait_for(process, run_dir, lambda _: checkpoint.is_file())
    filler = _faults.fill_disk(run_dir, leave_bytes=checkpoint_bytes // 2) if at else None
    code = process.wait()
    if filler is not None:
        filler.unlink()
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return {
        "signal": "ENOSPC",
        "after_s": None,
        "phase": at.phase if at else "exited before the disk filled",
        "exit": code,
        "message": lines[-1] if lines else "",
    }


def run_cycle(
    index: int,
    kind: str,
    root: Path,
    reference: dict[str, Any],
    window_s: float,
    kills: int,
    checkpoint_bytes: int,
    rng: random.Random,
) -> Cycle:
    """Interrupt a fresh run (``kills`` random signals, a fault point, or a full disk), check a
    usable checkpoint survived each interruption, then resume it to the end and compare with
    ``reference``."""
    run_dir, log = root / f"cycle{index}", root / f"cycle{index}.log"
    started = time.monotonic()
    landed, kept = [], True
    with contextlib.ExitStack() as stack:
        if kind == "disk_full":
            stack.enter_context(_faults.small_disk(run_dir, size_mb=64))
            landed.append(_disk_full(run_dir, log, checkpoint_bytes))
            kept &= checkpoints_intact(run_dir)
        elif kind == "random":
            left_s = window_s  # about what remains of the run: a later kill is drawn in it
            for attempt in range(kills):
                landed.append(_interrupt(run_dir, log, attempt > 0, left_s, rng))
                kept &= checkpoints_intact(run_dir)
                left_s = max(1.0, left_s - landed[-1]["after_s"])
        else:
            landed.append(_fault_point(run_dir, log, kind, rng))
            kept &= checkpoints_intact(run_dir)
        final = start_prune(run_dir, resume=True, stdout=log)
        final_exit = final.wait()
        found = (
            differences(reference, comparable_result(run_dir))
            if final_exit == 0
            else [f"the last resume exited with {final_exit}; see {log}"]
        )
    seconds = time.monotonic() - started
    return Cycle(index, kind, landed, final_exit, not found, found, kept, seconds)


def machine() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": int(SINGLE_THREAD_ENV["OMP_NUM_THREADS"]),
        "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }


def render_markdown(result: dict[str, Any]) -> str:
    m, summary = result["machine"], result["summary"]
    lines = [
        "# Fault injection: interrupt `ebcompress prune` anywhere, resume, compare",
        "",
        f"Measured {m['date']} on {m['platform']} ({m['processor']}, {m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch thread, load average {m['load_average']}), torch "
        f"{m['torch']}, commit {m['commit']}.",
        "",
        f"Recipe: quickstart with `{' '.join(result['overrides'])}`. Three kinds of cycle, "
        f"each from a fresh run directory and ending with `--resume` to the end (seed "
        f"{result['seed']}):",
        "",
        f"- **random**: {result['kills_per_cycle']} signals per cycle, each SIGKILL or SIGTERM "
        f"(drawn), at a moment drawn uniformly from [0, {result['window_s']:.1f} s) after the "
        "process took the run's lock (the uninterrupted run's active time);",
        "- **fault points** (`benchmarks/_faults.py`): the process SIGKILLs itself at the n-th "
        "rename onto a checkpoint, a bundle file or a report file (new file written, old one "
        "still in place), or in the n-th torch-pruning `Group.prune` of the slimming;",
        "- **disk_full**: the run directory is a 64 MiB tmpfs, filled right after the first "
        "search checkpoint so the next one cannot be written; the space is then freed.",
        "",
        f"**{summary['identical']} of {summary['cycles']} cycles resumed to a result identical "
        "to the uninterrupted run** (ticket.json, every tensor of model.safetensors, and "
        "report.json without its wall-clock and energy fields), and after "
        f"**{summary['checkpoints_kept']} of {summary['cycles']}** every interruption left a "
        "usable checkpoint for each phase that had written one. Target: all of them. "
        f"{summary['interrupted']} cycles were really interrupted; in the others every "
        "signal came after the run had finished.",
        "",
        "| cycle | kind | interruptions: where (signal, exit) | last resume exit | "
        "identical | checkpoint kept | seconds |",
        "|---:|---|---|---:|:---:|:---:|---:|",
    ]
    for cycle in result["cycles"]:
        where = ", ".join(
            f"{k['phase']} ({k['signal']}, {k['exit']})"
            + (f" after {k['after_s']:.2f} s" if k["after_s"] is not None else "")
            for k in cycle["kills"]
        )
        mark = "yes" if cycle["identical"] else "NO: " + "; ".join(cycle["differences"][:3])
        lines.append(
            f"| {cycle['index']} | {cycle['kind']} | {where} | {cycle['final_exit']} | {mark} "
            f"| {'yes' if cycle['checkpoints_kept'] else 'NO'} | {cycle['seconds']:.0f} |"
        )
    phases = ", ".join(f"{phase}: {n}" for phase, n in sorted(summary["kills_by_phase"].items()))
    lines += ["", f"Random signals by phase: {phases}.", ""]
    lines += [f"Disk-full message: `{k['message']}`" for k in summary["disk_full"]]
    if result["disk_full_not_run"]:
        lines.append(f"**The disk-full cycle did not run:** {result['disk_full_not_run']}.")
    return "\n".join(lines) + "\n"


def _summary(cycles: list[Cycle]) -> dict[str, Any]:
    by_phase: dict[str, int] = {}
    for cycle in cycles:
        if cycle.kind == "random":
            for kill in cycle.kills:
                by_phase[kill["phase"]] = by_phase.get(kill["phase"], 0) + 1
    return {
        "cycles": len(cycles),
        "interrupted": sum(any(k["exit"] != 0 for k in c.kills) for c in cycles),
        "identical": sum(c.identical for c in cycles),
        "checkpoints_kept": sum(c.checkpoints_kept for c in cycles),
        "kills_by_phase": by_phase,
        "disk_full": [k for c in cycles if c.kind == "disk_full" for k in c.kills],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=16, help="random-signal cycles")
    parser.add_argument("--kills", type=int, default=2, help="signals per random cycle")
    parser.add_argument("--point-cycles", type=int, default=2, help="cycles per fault point")
    parser.add_argument("--no-disk-full", action="store_true", help="skip the tmpfs cycle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument("--stem", default="fault_injection", help="results file name")
    args = parser.parse_args(argv)

    kinds = ["random"] * args.cycles
    kinds += [point for point in _faults.POINTS for _ in range(args.point_cycles)]
    rng = random.Random(args.seed)
    result: dict[str, Any] = {
        "machine": machine(),
        "overrides": list(QUICK_OVERRIDES),
        "seed": args.seed,
        "kills_per_cycle": args.kills,
        "disk_full_not_run": "--no-disk-full" if args.no_disk_full else None,
    }
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        if not args.no_disk_full:
            try:  # a tmpfs needs root; without it the cycle is reported as not run
                with _faults.small_disk(root / "mount_probe", size_mb=1):
                    kinds.append("disk_full")
            except OSError as exc:
                result["disk_full_not_run"] = str(exc)
        reference_dir = root / "reference"
        process = start_prune(reference_dir, resume=False, stdout=root / "reference.log")
        result["window_s"] = window_s = active_seconds(process, reference_dir)
        reference = comparable_result(reference_dir)
        checkpoint_bytes = (reference_dir / "checkpoints" / "search" / "last.pt").stat().st_size
        print(f"uninterrupted run: {window_s:.1f} s after taking the lock", flush=True)
        cycles: list[Cycle] = []
        for index, kind in enumerate(kinds, start=1):
            cycle = run_cycle(
                index, kind, root, reference, window_s, args.kills, checkpoint_bytes, rng
            )
            print(
                f"cycle {index} ({kind}): {[k['phase'] for k in cycle.kills]}, "
                f"identical={cycle.identical} kept={cycle.checkpoints_kept} "
                f"{cycle.differences[:3]}",
                flush=True,
            )
            cycles.append(cycle)
            # Written after every cycle, so an interrupted soak still shows what it found.
            result.update(summary=_summary(cycles), cycles=[asdict(c) for c in cycles])
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{args.stem}.json").write_text(json.dumps(result, indent=1) + "\n")
            (RESULTS / f"{args.stem}.md").write_text(render_markdown(result))
    summary = result["summary"]
    print(f"{summary['identical']}/{len(cycles)} identical; wrote {RESULTS}/{args.stem}.*")
    return result


if __name__ == "__main__":
    main()
