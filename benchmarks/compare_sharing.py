"""What sharing phases saves a compare: shared against independent, side by side.

Runs ``ebcompress compare`` on one recipe (default: the quickstart, 5 methods x 3 ratios)
twice in one process, into fresh folders: once sharing what the ratios of a method have in
common (one Early-Bird search for every ratio, one dense training for network slimming, LT
and ThiNet: :mod:`ebcompress.run.shared`), once with every (method, ratio) on its own
(``--independent``). It checks that both end with the same tickets and the same slim weights,
and writes the wall times, the FLOPs really trained and their ratios to
``results/<stem>.{json,md}``. Target: the shared compare takes at most 40 % of the
independent runs' wall time.

    python benchmarks/compare_sharing.py                  # quickstart: ~15 minutes on 2 cores
    python benchmarks/compare_sharing.py --budget short   # a minute
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _seed_stats import provenance  # noqa: E402
from _shared import RESULTS, machine_line, write_results  # noqa: E402

from ebcompress.methods.catalog import METHODS  # noqa: E402
from ebcompress.recipe import load_recipe  # noqa: E402
from ebcompress.run.compare import run_compare  # noqa: E402

TARGET = 0.40  # shared wall / independent wall
SHORT = (
    "train.epochs=4",
    "train.milestones=[3]",
    "data.train_subset=256",
    "data.test_subset=96",
    "prune.window=2",
    "retrain.epochs=2",
    "prune.thinet.samples=16",
)


def identical(shared: Path, alone: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The run folders whose ticket or slim weights differ between the two compares."""
    differing = []
    for row in rows:
        a, b = shared / row["run_dir"], alone / row["run_dir"]
        same = json.loads((a / "ticket.json").read_text()) == json.loads(
            (b / "ticket.json").read_text()
        )
        wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (a, b))
        same = same and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        if not same:
            differing.append(row["run_dir"])
    return differing


def markdown(result: dict[str, Any]) -> str:
    s, i = result["shared"], result["independent"]
    share = result["wall_share"]
    verdict = "met" if share <= TARGET else "**MISSED**"
    lines = [
        "# Shared phases in compare: the same runs for less training",
        "",
        machine_line(result["machine"]),
        "",
        f"Recipe `{result['recipe']}` (overrides: {result['overrides'] or 'none'}), methods "
        f"{', '.join(result['methods'])} at p = {', '.join(f'{r:g}' for r in result['ratios'])}"
        f": {len(result['rows'])} runs per compare, one after the other in one process "
        f"(independent first). Load average {result['load'][0]:.1f} at the start, "
        f"{result['load'][1]:.1f} between, {result['load'][2]:.1f} at the end.",
        "",
        "| compare | wall s | FLOPs trained | training s (ledger) |",
        "|---|---:|---:|---:|",
        f"| independent | {i['wall']:.0f} | {i['flops']:.3e} | {i['train_s']:.0f} |",
        f"| shared | {s['wall']:.0f} | {s['flops']:.3e} | {s['train_s']:.0f} |",
        f"| shared / independent | {share:.2f} | {s['flops'] / i['flops']:.2f} | "
        f"{s['train_s'] / i['train_s']:.2f} |",
        "",
        f"Target: shared wall time <= {TARGET:.0%} of the independent runs': {share:.0%}, "
        f"{verdict}.",
        "",
        "Same tickets and slim weights in every run: "
        + ("yes" if not result["differing"] else f"**no**: {', '.join(result['differing'])}"),
        "",
        "Per method, FLOPs trained (independent -> shared): "
        + "; ".join(
            f"{m} {c['per_ratio_flops']:.2e} -> {c['shared_flops']:.2e}"
            for m, c in result["cost"].items()
        ),
    ]
    if share > TARGET:
        retrain = result["retrain_share"]
        floor = retrain * i["train_s"] / i["wall"]
        lines += [
            "",
            f"Why it is missed: only the searches are shared. The retraining, which every "
            f"(method, ratio) still pays, is {retrain:.0%} of the independent runs' training "
            f"time: were every search free, the retraining alone would take {floor:.0%} of the "
            "independent wall time. Each run also builds its data and model, evaluates every "
            "epoch, slims, exports and writes its report, which sharing does not remove. The "
            "load average rose while the shared compare ran (above), which lengthens its wall "
            "time against the independent one's.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--budget", choices=["full", "short"], default="full")
    parser.add_argument("--methods", default=",".join(METHODS.names()))
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_compare_sharing"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = list(SHORT) if args.budget == "short" else []
    recipe = load_recipe(args.recipe, overrides)
    methods = [m for m in args.methods.split(",") if m]
    ratios = [float(r) for r in args.ratios.split(",") if r]
    stem = args.stem or ("compare_sharing" if args.budget == "full" else "compare_sharing_short")
    shutil.rmtree(args.runs, ignore_errors=True)  # both compares start from nothing
    machine, loads, measured = provenance(), [], {}
    for mode in ("independent", "shared"):
        loads.append(machine["load_average"][0] if not loads else provenance()["load_average"][0])
        start = time.perf_counter()
        measured[mode] = run_compare(
            recipe,
            args.runs / mode,
            methods=methods,
            ratios=ratios,
            progress=False,
            shared=mode == "shared",
        )
        measured[mode]["wall"] = time.perf_counter() - start
    loads.append(provenance()["load_average"][0])
    totals = {}
    for mode, result in measured.items():
        cost = result["cost"].values()
        totals[mode] = {
            "wall": result["wall"],
            "flops": sum(c["shared_flops"] for c in cost),
            "train_s": sum(c["shared_seconds"] for c in cost),
        }
    rows = measured["shared"]["rows"]
    alone = measured["independent"]["rows"]
    retrain_s = sum(r["seconds"] - r["search_seconds"] for r in alone)
    result = {
        "benchmark": "compare_sharing",
        "machine": machine,
        "recipe": recipe.name,
        "overrides": overrides,
        "methods": methods,
        "ratios": ratios,
        "load": loads,
        **totals,
        "wall_share": totals["shared"]["wall"] / totals["independent"]["wall"],
        "retrain_share": retrain_s / max(totals["independent"]["train_s"], 1e-9),
        "differing": identical(args.runs / "shared", args.runs / "independent", rows),
        "cost": measured["shared"]["cost"],
        "rows": rows,
    }
    write_results(stem, result, markdown(result), args.results)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
