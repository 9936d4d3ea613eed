"""Measured time and energy of the whole EB pipeline in fp32, bf16 and bfp8, on one GPU.

You et al. (ICLR 2020, Sec. 4.3, Table 2) report that searching in 8-bit cuts the training
energy further. This script runs two workloads end to end (search, slim, retrain, export,
report) with ``train.precision`` and ``retrain.precision`` both set to each precision, on one
device, and records per run: the wall time of the pipeline, the training-pass seconds and the
measured joules of the search and retrain phases (from the ledger; "not measured" where the
machine exposes no counter: NVML needs the optional ``nvidia-ml-py``), the ticket epoch and the
final accuracy. Times and energies are also given relative to fp32 in the same invocation.

Workloads:

* ``quickstart``: the shipped quickstart recipe (narrow VGG-11 on the embedded digits);
* ``fashion_mnist``: the same network at 32 px on Fashion-MNIST read from ``--data DIR`` (the IDX
  files). Where that folder is missing or unreadable, the workload runs on the digits data
  instead and the results say so.

bfp8 is an *emulation* (fp32 arithmetic plus quantisation passes, ebcompress.engine.bfp8): it shows
bfp8's effect on the ticket and accuracy and what the emulation costs, not the speed or energy of
8-bit hardware. One untimed warm-up run comes first (CUDA context, cuDNN, allocator).

    python benchmarks/gpu_precision.py --device cuda --data /path/to/fashion-mnist
    python benchmarks/gpu_precision.py --device cpu --budget tiny --out /tmp/gpu_precision
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ebcompress.cost.energy import available_counters
from ebcompress.data import DataOptions, load_data
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.run.pipeline import run_pipeline

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "gpu_precision"
PRECISIONS = ("fp32", "bf16", "bfp8")
WORKLOADS = ("quickstart", "fashion_mnist")

# Overrides of the quickstart recipe per workload and budget.
BUDGETS: dict[str, dict[str, list[str]]] = {
    "tiny": {
        "common": [
            "train.epochs=3",
            "train.milestones=[2]",
            "train.batch_size=32",
            "data.train_subset=96",
            "data.test_subset=48",
            "prune.window=2",
            "prune.epsilon=0.5",
            "prune.watch_ratios=[]",
        ],
        "fashion_mnist": [],
    },
    "standard": {
        "common": [],
        "fashion_mnist": [
            "model.kwargs={width_mult: 0.5}",
            "data.image_size=32",
            "data.train_subset=20000",
            "data.test_subset=5000",
            "train.epochs=20",
            "train.milestones=[10,15]",
            "train.batch_size=256",
        ],
    },
}
WARMUP = BUDGETS["tiny"]["common"]


def fashion_data(root: str | None) -> tuple[str, str]:
    """("fashion_mnist", "") when the IDX files load from ``root``, else ("digits", why)."""
    if root is None:
        return "digits", "no --data folder given; the fashion_mnist workload ran on digits"
    try:
        load_data(DataOptions(name="fashion_mnist", root=root), root=root)
    except UserError as err:
        return "digits", f"fashion_mnist not readable ({err}); the workload ran on digits"
    return "fashion_mnist", ""


def energy_setup(device: torch.device) -> str:
    names = [counter.name for counter in available_counters(device)]
    if names:
        return ", ".join(names)
    hint = " (install nvidia-ml-py for NVML)" if device.type == "cuda" else ""
    return f"none: energy not measured{hint}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def run_once(overrides: list[str], device: str, data_root: str | None) -> dict[str, Any]:
    """One pipeline run into a throw-away run directory; what the table needs from it."""
    recipe = load_recipe("quickstart", overrides)
    with tempfile.TemporaryDirectory(prefix="ebc_precision_") as folder:
        start = time.perf_counter()
        report = run_pipeline(
            recipe, Path(folder) / "run", data_root=data_root, device=device, progress=False
        )
        wall = time.perf_counter() - start
    seconds = report["timing"]["seconds_per_phase"]
    phases = {
        p["phase"]: {
            "epochs": p["epochs"],
            "samples": p["samples"],
            "seconds": seconds[p["phase"]],
            "joules": p["joules"],
        }
        for p in report["cost"]["phases"]
    }
    return {
        "wall_seconds": wall,
        "phases": phases,
        "train_seconds": report["timing"]["total_seconds"],
        "train_joules": report["cost"]["total_joules"],
        "ticket_epoch": report["ticket"]["epoch"],
        "emerged": report["ticket"]["emerged"],
        "test_top1": report["accuracy"]["test_top1"],
        "slim_macs": report["model"]["slim"]["macs"],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    budget = BUDGETS[args.budget]
    fashion_name, note = fashion_data(args.data)
    print(f"device: {device_name(device)}; energy counters: {energy_setup(device)}")
    if note:
        print(f"note: {note}")
    run_once(WARMUP, args.device, None)  # untimed

    runs = []
    for workload in args.workloads:
        overrides = list(budget["common"])
        data_root = None
        if workload == "fashion_mnist":
            overrides += [f"data.name={fashion_name}", *budget["fashion_mnist"]]
            data_root = args.data if fashion_name == "fashion_mnist" else None
        for precision in args.precisions:
            sets = [*overrides, f"train.precision={precision}", f"retrain.precision={precision}"]
            result = run_once(sets, args.device, data_root)
            result.update(workload=workload, precision=precision, overrides=sets)
            print(
                f"{workload} {precision}: {result['wall_seconds']:.1f}s wall, "
                f"{result['train_seconds']:.1f}s training, joules {result['train_joules']}, "
                f"ticket epoch {result['ticket_epoch']}, top-1 {result['test_top1']:.4f}"
            )
            runs.append(result)
    return {
        "device": device_name(device),
        "device_type": device.type,
        "energy_counters": energy_setup(device),
        "budget": args.budget,
        "fashion_mnist_data": fashion_name,
        "note": note,
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": runs,
    }


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "not measured" if value is None else f"{value:,.{digits}f} {unit}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}x"


def render(data: dict[str, Any]) -> str:
    lines = [
        "# Whole-pipeline time and measured energy by precision",
        "",
        f"Device: **{data['device']}** (torch {data['torch']}, {data['date']}); energy counters: "
        f"{data['energy_counters']}. Budget `{data['budget']}`.",
        "",
        "Training = the search and retrain phases' training passes (ledger seconds and joules);",
        "wall = the whole pipeline (also evaluation, slimming, export, report). Ratios are to",
        "fp32 in the same invocation. bfp8 is emulated in fp32 arithmetic (engine/bfp8.py), so",
        "its time and energy are the emulation's, not those of 8-bit hardware.",
        "",
        "| workload | precision | wall | training | vs fp32 | energy | vs fp32 | "
        "search (epochs, J) | retrain (epochs, J) | ticket | top-1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |",
    ]
    reference = {r["workload"]: r for r in data["runs"] if r["precision"] == "fp32"}
    for run in data["runs"]:
        ref = reference.get(run["workload"], {})
        search, retrain = run["phases"].get("search", {}), run["phases"].get("retrain", {})
        ticket = f"epoch {run['ticket_epoch']}" + ("" if run["emerged"] else " (not emerged)")
        seconds, joules = run["train_seconds"], run["train_joules"]
        lines.append(
            f"| {run['workload']} | {run['precision']} | {run['wall_seconds']:.1f} s | "
            f"{seconds:.1f} s | {_ratio(seconds, ref.get('train_seconds'))} | "
            f"{_fmt(joules, 'J')} | {_ratio(joules, ref.get('train_joules'))} | "
            f"{search.get('epochs')}, {_fmt(search.get('joules'), 'J')} | "
            f"{retrain.get('epochs')}, {_fmt(retrain.get('joules'), 'J')} | {ticket} | "
            f"{100 * run['test_top1']:.2f}% |"
        )
    if data["note"]:
        lines += ["", f"Note: {data['note']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="standard")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    args = parser.parse_args()
    data = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{STEM}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    (args.out / f"{STEM}.md").write_text(render(data), encoding="utf-8")
    print(f"wrote {args.out / STEM}.json and .md")


if __name__ == "__main__":
    main()
