"""Statistics over seeds, and the provenance of one benchmark run.

Pure Python / NumPy / SciPy (SciPy comes with scikit-learn), so any benchmark can report a
mean over seeds, the paired difference of two configurations measured on the same seeds with
its Student-t confidence interval, and what machine, versions and commit produced a number.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Hashable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Distribution names whose versions go into every record (None when not installed).
PACKAGES = ("torch", "torchvision", "timm", "torch-pruning", "ebcompress")


def mean_sd(values: Iterable[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (ddof=1) of ``values``.

    One value has no spread: its sd is None, never NaN. An empty input is a ValueError
    (a mean of nothing is a caller's bug, not a number to print)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_sd: no values")
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var)


def paired_difference(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], confidence: float = 0.95
) -> dict[str, Any]:
    """The per-seed difference ``a[seed] - b[seed]`` over the seeds both have.

    Seeds match by ``str(seed)``, so keys read back from JSON (always strings) pair with int
    keys. Returns ``{"n", "seeds", "mean", "sd", "confidence", "ci"}``: ``ci`` is the two-sided
    Student-t interval ``mean -/+ t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` as ``[low, high]``,
    None when n < 2 (one seed has no spread); ``sd`` is None when n < 2; ``mean`` is None when
    no seed is shared (n = 0)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_difference: confidence must lie in (0, 1), got {confidence}")
    b_by_name = {str(k): v for k, v in b.items()}
    seeds = sorted((k for k in a if str(k) in b_by_name), key=_seed_order)
    diffs = [float(a[k]) - float(b_by_name[str(k)]) for k in seeds]
    out: dict[str, Any] = {
        "n": len(diffs),
        "seeds": [str(k) for k in seeds],
        "mean": None,
        "sd": None,
        "confidence": confidence,
        "ci": None,
    }
    if not diffs:
        return out
    out["mean"], out["sd"] = mean_sd(diffs)
    if out["sd"] is not None:
        from scipy.stats import t  # imported here: only a report with >= 2 seeds needs it

        half = float(t.ppf((1.0 + confidence) / 2.0, len(diffs) - 1)) * out["sd"]
        half /= math.sqrt(len(diffs))
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def provenance(device: str = "cpu") -> dict[str, Any]:
    """What one run was measured on: date (UTC ISO), platform (no host name), CPU count,
    torch threads, the 1/5/15-minute load averages, package versions, the GPU when CUDA is
    available, and the repository's git commit. Never raises for a missing piece: an unknown
    value is None.

    Extends :func:`ebcompress.deploy.bench.machine_info` (its keys stay, so
    ``_shared.machine_line`` still reads the result)."""
    import torch

    from ebcompress.deploy.bench import machine_info

    info = machine_info(device)
    try:
        info["load_average"] = list(os.getloadavg())
    except (AttributeError, OSError):  # not on every platform
        info["load_average"] = None
    info["versions"] = {name: _version(name) for name in PACKAGES}
    if torch.cuda.is_available():
        try:
            info["gpu"] = torch.cuda.get_device_name()
        except Exception:  # a broken driver must not lose the run's numbers
            info["gpu"] = None
    info["git_commit"] = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    info["git_dirty"] = None if status is None else bool(status)
    return info


def _seed_order(seed: Hashable) -> tuple[int, Any]:
    # Numeric seeds in numeric order (2 before 10), anything else after them by name.
    text = str(seed)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
