"""Run every benchmark in this folder, one after the other: what ``make bench`` calls.

``--budget full`` runs each with its own defaults (the numbers that go into
``benchmarks/results``); ``--budget short`` gives each a few minutes, writing under separate
``*_short`` result names where the script allows it, so a quick look never overwrites the
full numbers. A benchmark that fails does not stop the others; the summary lists each one's
exit status and time, and the exit status is 1 if any failed.

    python benchmarks/run_all.py --budget short
    python benchmarks/run_all.py --only eb_vs_baselines eb_emergence --dry-run
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    """One script and its command-line arguments per budget (split like a shell would)."""

    name: str
    full: str
    short: str

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"

    def argv(self, budget: str) -> list[str]:
        return [sys.executable, str(self.script), *shlex.split(getattr(self, budget))]


SHORT_RESULTS_ARG = shlex.quote(str(HERE / "results" / "short"))
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("headline", full="--threads 1 --quiet", short="--budget short --threads 1 --quiet"),
    Benchmark("compare_sharing", full="", short="--budget short"),
    Benchmark("eb_vs_baselines", full="", short="--budget short"),
    Benchmark("eb_emergence", full="", short="--budget short"),
    Benchmark("engine_overhead", full="", short=f"--repeats 2 --out {SHORT_RESULTS_ARG}"),
    Benchmark(
        "slim_time",
        full="",
        short="--size 112 --repeats 10 --slim-repeats 2 --stem slim_time_short",
    ),
    Benchmark(
        "slim_speedup",
        full="",
        short="--models vgg16_cifar --runtimes torch --repeats 2 --stem slim_speedup_short",
    ),
    Benchmark("slim_epoch_speed", full="", short="--budget short"),
    Benchmark("timm_coverage", full="", short="--limit 8 --stem timm_coverage_short"),
    Benchmark("macs_budget", full="", short="--limit 6 --stem macs_budget_short"),
    Benchmark(
        "fault_injection",
        full="",
        short="--cycles 1 --kills 1 --point-cycles 0 --no-disk-full --stem fault_injection_short",
    ),
    Benchmark("user_models", full="--quiet", short="--budget short --quiet"),
    Benchmark("plan_accuracy", full="", short="--budget short"),
    Benchmark(
        "distill_gain",
        full="",
        short="--seeds 0,1 --set train.epochs=6 --set train.milestones=[3,5] "
        "--set data.train_subset=400 --stem distill_gain_short",
    ),
)
BUDGETS = ("full", "short")


def run_all(
    budget: str, only: list[str] | None = None, *, dry_run: bool = False
) -> list[dict[str, object]]:
    """Run the selected benchmarks at ``budget``; one summary record per benchmark."""
    known = {b.name: b for b in BENCHMARKS}
    unknown = sorted(set(only or ()) - known.keys())
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; choose from {sorted(known)}")
    selected = [b for b in BENCHMARKS if not only or b.name in only]
    summary: list[dict[str, object]] = []
    for bench in selected:
        argv = bench.argv(budget)
        record: dict[str, object] = {"name": bench.name, "argv": argv[1:]}
        if not bench.script.is_file():
            summary.append({**record, "status": "missing", "seconds": 0.0})
            print(f"== {bench.name}: {bench.script.name} not found, skipped", flush=True)
            continue
        print(f"== {bench.name}: {' '.join(argv[1:])}", flush=True)
        if dry_run:
            summary.append({**record, "status": "dry-run", "seconds": 0.0})
            continue
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=HERE.parent, check=False).returncode
        status = "ok" if code == 0 else f"failed (exit {code})"
        summary.append({**record, "status": status, "seconds": time.perf_counter() - start})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=BUDGETS, default="full")
    parser.add_argument("--only", nargs="+", help="benchmark names (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    summary = run_all(args.budget, args.only, dry_run=args.dry_run)
    print(f"\nbenchmarks ({args.budget}):")
    for record in summary:
        print(f"  {record['name']:<18} {record['status']:<18} {record['seconds']:8.0f} s")
    return 1 if any(r["status"] not in ("ok", "dry-run") for r in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
