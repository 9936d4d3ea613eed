"""The faults benchmarks/fault_injection.py injects into an ``ebcompress prune`` subprocess.

A signal at a random moment rarely lands in the short phases (slimming, the export, the
report), so those get *fault points*: the subprocess runs this file, which installs a hook
and then the ordinary command line. The hook SIGKILLs (or, asked, SIGTERMs) its own process

* ``checkpoint``, ``export``, ``report``: at the n-th atomic rename onto a checkpoint
  (``last.pt``), a bundle file or a report file, i.e. with the new file fully written beside
  the old one and not yet in its place (every writer renames through ``os.replace``);
* ``slimming``: in the n-th torch-pruning ``Group.prune`` call made once ``ticket.json``
  exists, i.e. with the network half slimmed.

The disk-full cycle puts the run directory on a small tmpfs (:func:`small_disk`, needs root)
and fills it (:func:`fill_disk`) between two checkpoints.

    python benchmarks/_faults.py POINT N SIGKILL prune --recipe ... --out RUN ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# The files each rename point watches (by name suffix).
RENAME_POINTS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("last.pt",),
    "export": ("model.safetensors", "structure.json", "config.json"),
    "report": ("report.json", "report.md", ".png"),
}
POINTS = (*RENAME_POINTS, "slimming")


def fault_command(
    point: str, nth: int, prune_argv: list[str], sig: signal.Signals = signal.SIGKILL
) -> list[str]:
    """The subprocess command line: ``ebcompress PRUNE_ARGV`` with fault ``point`` armed to
    send the process ``sig``."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; one of {POINTS}")
    here = str(Path(__file__).resolve())
    return [sys.executable, here, point, str(nth), sig.name, *prune_argv]


def install(point: str, nth: int, run_dir: Path, sig: signal.Signals = signal.SIGKILL) -> None:
    """Arm ``point`` in this process: send it ``sig`` at the ``nth`` matching event."""
    seen = [0]

    def hit() -> None:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), sig)

    if point == "slimming":
        import torch_pruning as tp

        prune = tp.Group.prune

        def prune_then_maybe_die(self, *args, **kwargs):
            if (run_dir / "ticket.json").is_file():
                hit()
            return prune(self, *args, **kwargs)

        tp.Group.prune = prune_then_maybe_die
        return
    suffixes = RENAME_POINTS[point]
    replace = os.replace

    def replace_or_die(src, dst, *args, **kwargs):
        if str(dst).endswith(suffixes):
            hit()
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_or_die


@contextlib.contextmanager
def small_disk(folder: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MiB tmpfs at ``folder`` for the block (root only; OSError else)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise OSError(f"cannot mount a tmpfs at {folder}: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path, leave_bytes: int) -> Path:
    """Write a filler file into ``folder`` until about ``leave_bytes`` remain free."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler.bin"
    with open(filler, "wb") as handle:
        chunk = b"\0" * (1 << 20)
        remaining = max(0, free - leave_bytes)
        while remaining > 0:
            remaining -= handle.write(chunk[: min(len(chunk), remaining)])
    return filler


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


if __name__ == "__main__":
    point, nth, sig, *prune_argv = sys.argv[1:]
    run_dir = Path(prune_argv[prune_argv.index("--out") + 1])
    install(point, int(nth), run_dir, signal.Signals[sig])
    from ebcompress.cli.app import main

    main(prune_argv)
