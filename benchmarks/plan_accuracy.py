"""Does ``ebcompress plan`` forecast what a run then costs? Forecast against measured, per phase.

For each recipe: ``ebcompress plan --recipe R --out F`` in a fresh process (as a user runs it),
then the real runs of EB Train and network slimming in this process (``run_pipeline``, what
``ebcompress prune`` calls), each phase's ``Trainer.fit`` timed from outside. Per phase:

* training FLOPs: forecast (the ledger's formula at the epochs the phase ran; the retraining
  forecast uses a stand-in ticket's MACs) against the run's ledger;
* training time: the forecast's training passes against the ledger's seconds (the run's cost
  table);
* phase wall: the forecast with the evaluation after every epoch, checkpoints and callbacks
  against the measured ``Trainer.fit`` wall.

An EB search's length is not known before its ticket emerges, so each phase is forecast at the
epochs it ran (the forecast is a cost per epoch). Target: wall-time forecasts within 25 % on
the quickstart and Fashion-MNIST recipes (every phase, both time measures). Each run's
``forecast.json`` is copied into its run directory and its report rebuilt, so report.md shows
the comparison too. Forecast and runs share the machine's load, whatever it is; the load
average is recorded.

    python benchmarks/plan_accuracy.py                  # about 7 minutes on 2 cores
    python benchmarks/plan_accuracy.py --budget short   # the quickstart only, shortened
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import RESULTS, machine_line  # noqa: E402

from ebcompress.cost.forecast import Forecast, relative_error  # noqa: E402
from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.engine.trainer import Trainer  # noqa: E402
from ebcompress.recipe import load_recipe  # noqa: E402
from ebcompress.report.build import write_report  # noqa: E402
from ebcompress.run.paths import RunPaths  # noqa: E402
from ebcompress.run.pipeline import run_pipeline  # noqa: E402
from ebcompress.run.state import read_state  # noqa: E402

TARGET = 0.25
FMNIST_SMALL = (  # the Fashion-MNIST recipe in a few minutes: 16-epoch schedules
    "train.epochs=16",
    "train.milestones=[8,12]",
    "retrain.epochs=16",
    "prune.max_search_epochs=14",
)
CASES = {
    "full": [("quickstart", ()), ("fashion_mnist_vgg_p30", FMNIST_SMALL)],
    "short": [
        ("quickstart", ("train.epochs=12", "train.milestones=[6,9]", "prune.window=3")),
    ],
}
METHODS = ("eb", "ns")


class FitClock:
    """Wraps ``Trainer.fit`` to record each call's phase, wall and process CPU seconds."""

    def __init__(self) -> None:
        self.walls: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._fit = Trainer.fit

    def __enter__(self) -> FitClock:
        clock, fit = self, self._fit

        def timed(trainer: Trainer, resume: bool = False) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fit(trainer, resume)
            finally:
                phase = trainer.config.phase
                clock.walls[phase] = clock.walls.get(phase, 0.0) + time.perf_counter() - start
                clock.cpu[phase] = clock.cpu.get(phase, 0.0) + time.process_time() - cpu

        Trainer.fit = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Trainer.fit = self._fit  # type: ignore[method-assign]


def forecast(recipe: str, sets: list[str], out: Path, threads: int) -> tuple[Forecast, float]:
    """``ebcompress plan`` in a fresh process, with this process's thread count."""
    argv = [sys.executable, "-m", "ebcompress", "plan", "--recipe", recipe, "--device", "cpu"]
    argv += [arg for s in sets for arg in ("--set", s)] + ["--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return Forecast.load(out), time.perf_counter() - start


def measure(
    recipe: str, sets: list[str], method: str, fc: Forecast, forecast_file: Path, runs: Path
) -> dict[str, Any]:
    """One real run, its phases against the forecast, and its report rebuilt with it."""
    run_dir = runs / f"{recipe}_{method}"
    resolved = load_recipe(recipe, [*sets, f"prune.method={method}"])
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with FitClock() as clock:
        report = run_pipeline(resolved, run_dir, overwrite=True, device="cpu", progress=False)
    total = time.perf_counter() - start
    shutil.copyfile(forecast_file, RunPaths(run_dir).forecast)
    write_report(run_dir)  # report.md now holds the "Forecast against measured" section
    ledger = read_state(run_dir).results.cost.ledger
    phases = []
    for check in fc.check(ledger, method):
        wall, cpu = clock.walls.get(check.phase), clock.cpu.get(check.phase)
        share = fc.rate(method, check.phase).cpu_share  # type: ignore[union-attr]
        predicted_cpu = None if share is None else check.predicted_wall_seconds * share
        phases.append(
            {
                **check.to_dict(),
                "measured_wall_seconds": wall,
                "wall_seconds_error": relative_error(check.predicted_wall_seconds, wall),
                # the load's part: CPU seconds per wall second while timed and while run
                "cpu_share_timed": share,
                "cpu_share_run": None if not wall or cpu is None else cpu / wall,
                "predicted_cpu_seconds": predicted_cpu,
                "measured_cpu_seconds": cpu,
                "cpu_seconds_error": relative_error(predicted_cpu, cpu),
            }
        )
    predicted_total = sum(p["predicted_wall_seconds"] for p in phases)
    return {
        "recipe": recipe,
        "method": method,
        "overrides": sets,
        "run_dir": str(run_dir),
        "ticket_epoch": report["ticket"]["epoch"],
        "test_top1": report["accuracy"]["test_top1"],
        "phases": phases,
        "run_wall_seconds": total,
        "phases_wall_predicted": predicted_total,
        "setup_seconds_forecast": sum(fc.setup_seconds.values()),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def verdicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [
        abs(err)
        for run in runs
        for phase in run["phases"]
        for err in (phase["train_seconds_error"], phase["wall_seconds_error"])
        if err is not None
    ]
    worst = max(errors) if errors else None
    return {
        "target": TARGET,
        "worst_abs_error": worst,
        "met": worst is not None and worst <= TARGET,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f} %"


def markdown(result: dict[str, Any]) -> str:
    v = result["verdict"]
    lines = [
        "# `ebcompress plan`: forecast against measured",
        "",
        machine_line(result["machine"]) + f" Budget `{result['budget']}`.",
        "",
        f"Target: every phase's wall-time forecast within {TARGET:.0%} (training passes and "
        f"the phase with its evaluation). Worst error {_pct(v['worst_abs_error'])}: "
        f"**{'met' if v['met'] else 'MISSED'}**.",
        "",
        "Each phase is forecast at the epochs it ran (a cost per epoch: how long an EB search "
        "lasts is not known before its ticket emerges). FLOPs of the search are the ledger's "
        "formula, so exact; the retraining's use a stand-in ticket's MACs (*).",
        "",
        "| recipe | method | phase | epochs | FLOPs error | training predicted | measured "
        "| error | with eval predicted | measured | error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        for p in run["phases"]:
            mark = "*" if p["macs_estimated"] else ""
            lines.append(
                f"| {run['recipe']} | {run['method']} | {p['phase']} | {p['epochs']} "
                f"| {_pct(p['flops_error'])}{mark} | {p['predicted_train_seconds']:.1f} s "
                f"| {p['measured_train_seconds']:.1f} s | {_pct(p['train_seconds_error'])} "
                f"| {p['predicted_wall_seconds']:.1f} s | {p['measured_wall_seconds']:.1f} s "
                f"| {_pct(p['wall_seconds_error'])} |"
            )
    lines += [
        "",
        "The load's part: this process's CPU seconds per wall second while the forecast timed "
        "it and while the phase ran (1.0 = a whole core for its one thread), and the forecast "
        "of the phase's CPU time (its wall forecast times the share while timed), which a "
        "changing load does not move:",
        "",
        "| recipe | method | phase | CPU share timed | CPU share run | CPU time predicted "
        "| measured | error |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        for p in run["phases"]:
            timed, ran = p["cpu_share_timed"], p["cpu_share_run"]
            predicted, measured = p["predicted_cpu_seconds"], p["measured_cpu_seconds"]
            lines.append(
                f"| {run['recipe']} | {run['method']} | {p['phase']} "
                f"| {'—' if timed is None else f'{timed:.2f}'} "
                f"| {'—' if ran is None else f'{ran:.2f}'} "
                f"| {'—' if predicted is None else f'{predicted:.1f} s'} "
                f"| {'—' if measured is None else f'{measured:.1f} s'} "
                f"| {_pct(p['cpu_seconds_error'])} |"
            )
    lines += [
        "",
        "| recipe | method | ticket epoch | forecast took | phases predicted | whole run "
        "measured (with setup, export, report) | load average (start, end) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for run in result["runs"]:
        took = result["plan_seconds"][f"{run['recipe']}/{run['method']}"]
        load = ", ".join(f"{x:.1f}" for x in run["load_average"])
        lines.append(
            f"| {run['recipe']} | {run['method']} | {run['ticket_epoch']} | {took:.1f} s "
            f"| {run['phases_wall_predicted']:.1f} s | {run['run_wall_seconds']:.1f} s "
            f"| {load} |"
        )
    return "\n".join([*lines, "", *(f"- {n}" for n in result["notes"]), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(CASES), default="full")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, plan and runs")
    parser.add_argument("--runs", type=Path, default=Path("runs/plan_accuracy"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="for tests")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("plan_accuracy" if args.budget == "full" else "plan_accuracy_short")
    machine = machine_info("cpu")
    runs, plan_seconds, notes = [], {}, []
    for recipe, sets in CASES[args.budget]:
        sets = [*sets, *args.extra]
        for method in METHODS:  # each run right after its own forecast, under the same load
            forecast_file = args.runs / f"{recipe}_{method}_forecast.json"
            fc, seconds = forecast(recipe, sets, forecast_file, args.threads)
            plan_seconds[f"{recipe}/{method}"] = seconds
            runs.append(measure(recipe, sets, method, fc, forecast_file, args.runs))
            print(json.dumps(runs[-1]["phases"], indent=1), flush=True)
        notes += [f"{recipe}: {note}" for note in fc.notes]
    result = {
        "benchmark": "plan_accuracy",
        "machine": machine,
        "budget": args.budget,
        "threads": args.threads,
        "plan_seconds": plan_seconds,
        "runs": runs,
        "verdict": verdicts(runs),
        "notes": notes,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.results / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
