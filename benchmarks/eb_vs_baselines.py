"""The headline benchmark: EB Train against NS, LT, SNIP and ThiNet on real Fashion-MNIST.

Every (method, ratio) runs through :func:`ebcompress.run.compare.run_compare` (what
``ebcompress compare`` calls) with one recipe, so all methods share the model, the data and
the dense schedule; each run's end-to-end wall clock is measured here around its call. A
finished run is read back, not trained again (its wall time comes from the sidecar file
``bench_wall.json`` this script leaves in the run directory); an interrupted one resumes.

Targets, each measured in the same invocation (You et al., ICLR 2020, Table 2 / Sec. 4.3):

- EB's total training FLOPs are >= 2.2x lower than network slimming's, at every ratio;
- EB's wall time is >= 2x lower than network slimming's;
- EB's retrain accuracy is within 0.5 points of network slimming's.

A missed target stays visible as missed, with the reason the numbers show (when the ticket
emerged, what emergence by which epoch would have needed, how the slim net's speed compares
with its MACs). Writes ``<results>/<stem>.{json,md}`` and ``<stem>_accuracy_vs_flops.png``.

    python benchmarks/eb_vs_baselines.py                   # full: well under an hour, 2 cores
    python benchmarks/eb_vs_baselines.py --budget short    # minutes, numbers only indicative
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import RESULTS, SHORT_OVERRIDES, machine_line  # noqa: E402

from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.recipe import Recipe, load_recipe, validate_recipe  # noqa: E402
from ebcompress.run.compare import run_compare  # noqa: E402
from ebcompress.run.paths import run_dir_name  # noqa: E402

FLOPS_TARGET = 2.2  # NS training FLOPs / EB training FLOPs (the paper's lower figure)
TIME_TARGET = 2.0  # NS wall time / EB wall time
ACCURACY_TOLERANCE = 0.5  # points of top-1 EB may trail NS by
METHODS = ("eb", "ns", "lt", "snip", "thinet")
RATIOS = (0.3, 0.5, 0.7)
WALL_FILE = "bench_wall.json"

# Recipe overrides per budget; "full" is the recipe as shipped.
BUDGETS: dict[str, tuple[str, ...]] = {
    "full": (),
    "short": (*SHORT_OVERRIDES, "retrain.epochs=10"),
}


def budget_recipe(name: str, budget: str, overrides: list[str]) -> Recipe:
    """The recipe ``name`` with the budget's overrides, then the user's ``--set`` ones."""
    return load_recipe(name, [*BUDGETS[budget], *overrides])


def budget_stem(name: str, budget: str) -> str:
    """Results file stem: ``name`` for the full budget, ``name_<budget>`` otherwise, so a quick
    look never overwrites the full run's numbers."""
    return name if budget == "full" else f"{name}_{budget}"


def run_one(
    recipe: Recipe,
    runs: Path,
    method: str,
    ratio: float,
    *,
    data_root: str | None,
    device: str | None,
    progress: bool,
) -> dict[str, Any]:
    """Run (or read back) one (method, ratio) and return its measured wall clock record."""
    run_dir = runs / run_dir_name(method, ratio)
    _refuse_other_config(run_dir, recipe, method, ratio)
    sidecar = run_dir / WALL_FILE
    if sidecar.is_file():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    resumed = run_dir.exists()
    machine, load_before = machine_info(device or "cpu"), os.getloadavg()[0]
    start = time.perf_counter()
    run_compare(
        recipe,
        runs,
        methods=[method],
        ratios=[ratio],
        data_root=data_root,
        device=device,
        progress=progress,
    )
    record = {
        "machine": machine,  # its date is the run's start
        "wall_seconds": time.perf_counter() - start,
        "resumed": resumed,  # an interrupted run's wall time misses its earlier part
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    sidecar.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _refuse_other_config(run_dir: Path, recipe: Recipe, method: str, ratio: float) -> None:
    """A run folder left by another configuration would be read back as if it were this one's
    (compare keeps finished runs), so it is an error."""
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return
    base = recipe.to_dict()
    expected = {**base, "prune": {**base["prune"], "method": method, "ratio": ratio}}
    found = validate_recipe(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}, str(saved))
    if found.to_dict() != validate_recipe(expected).to_dict():
        raise UserError(
            f"{str(run_dir)!r} holds a run of another configuration; delete it or choose "
            "another --runs folder"
        )


def _wall_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What a table row keeps of a run's wall clock record."""
    return {
        "wall_seconds": record["wall_seconds"],
        "resumed": record["resumed"],
        "load_average": [record["load_before"], record["load_after"]],
    }


def _load_range(records: Iterable[dict[str, Any]]) -> list[float]:
    loads = [x for r in records for x in (r["load_before"], r["load_after"])]
    return [min(loads), max(loads)]


def _report(runs: Path, row: dict[str, Any]) -> dict[str, Any]:
    return json.loads((runs / row["run_dir"] / "report.json").read_text(encoding="utf-8"))


def assess(rows: list[dict[str, Any]], runs: Path, epochs: int) -> list[dict[str, Any]]:
    """Per ratio: EB against NS on the three targets, each with ``met`` and, if missed, why."""
    verdicts = []
    for ratio in sorted({r["ratio"] for r in rows}):
        eb = next((r for r in rows if r["ratio"] == ratio and r["method"] == "eb"), None)
        ns = next((r for r in rows if r["ratio"] == ratio and r["method"] == "ns"), None)
        if eb is None or ns is None:
            continue
        eb_report, ns_report = _report(runs, eb), _report(runs, ns)
        flops_ratio = ns["total_flops"] / max(eb["total_flops"], 1)
        wall_ratio = ns["wall_seconds"] / max(eb["wall_seconds"], 1e-9)
        train_time_ratio = ns["seconds"] / max(eb["seconds"], 1e-9)
        points = 100 * (eb["test_top1"] - ns["test_top1"])
        verdict = {
            "ratio": ratio,
            "flops_ratio": flops_ratio,
            "flops_met": flops_ratio >= FLOPS_TARGET,
            "wall_ratio": wall_ratio,
            "train_time_ratio": train_time_ratio,
            "time_met": wall_ratio >= TIME_TARGET,
            "accuracy_points": points,
            "accuracy_met": points >= -ACCURACY_TOLERANCE,
            "eb_ticket_epoch": eb["ticket_epoch"],
            "eb_emerged": eb["emerged"],
            "why": [],
        }
        verdict["why"] = explain(verdict, eb_report, ns_report, epochs, {"eb": eb, "ns": ns})
        verdicts.append(verdict)
    return verdicts


def explain(
    verdict: dict[str, Any],
    eb: dict[str, Any],
    ns: dict[str, Any],
    epochs: int,
    walls: dict[str, dict[str, Any]],
) -> list[str]:
    """Plain-language reasons for each missed target, from the two runs' reports and table
    rows (``walls``: method -> row with its load averages)."""
    reasons = []
    search = eb["search"]
    ticket_epoch = eb["ticket"]["epoch"]
    trace = search.get("window_max_distances", {}).get(f"{eb['ticket']['ratio']:g}", [])
    distances = [d for d in trace if d is not None]
    if not verdict["flops_met"]:
        dense, slim = eb["model"]["dense"]["macs"], eb["model"]["slim"]["macs"]
        ns_macs = ns["cost"]["total_flops"] / (6 * eb["data"]["train"])  # MAC-epochs of NS
        # EB costs e*D + (T-e)*S MAC-epochs; the target needs that <= NS / 2.2.
        needed = (ns_macs / FLOPS_TARGET - epochs * slim) / max(dense - slim, 1)
        drawn = (
            "the ticket emerged at"
            if eb["ticket"]["emerged"]
            else "no ticket emerged; the search stopped at"
        )
        reason = (
            f"FLOPs: {drawn} epoch {ticket_epoch} of {epochs} "
            f"({100 * ticket_epoch / epochs:.0f} % of the schedule); {FLOPS_TARGET}x needs a "
            f"ticket by epoch {max(needed, 0):.1f} with this slim net ({slim / dense:.0%} of the "
            "dense MACs)"
        )
        if distances:
            reason += (
                f"; the window's max mask distance went from {distances[0]:.3f} to "
                f"{min(distances):.3f} at best (epsilon {eb['recipe']['prune']['epsilon']:g})"
            )
        reasons.append(reason)
    if not verdict["time_met"]:
        reasons.append(
            f"wall time: {verdict['wall_ratio']:.2f}x (training passes alone "
            f"{verdict['train_time_ratio']:.2f}x) against {verdict['flops_ratio']:.2f}x in FLOPs; "
            + _speed_note(eb)
            + f"; load average during NS {_loads(walls['ns'])}, during EB {_loads(walls['eb'])}"
        )
    if not verdict["accuracy_met"]:
        if eb["retrain"].get("mode") == "reinit":
            start = "both from the same fresh initialisation, so only the tickets differ"
        else:
            start = (
                f"each inheriting its dense weights, EB's after {ticket_epoch} epochs of "
                f"training, NS's after {ns['search']['epochs']}"
            )
        reasons.append(
            f"accuracy: EB trails NS by {-verdict['accuracy_points']:.2f} points; its ticket was "
            f"drawn at epoch {ticket_epoch} and retrained {eb['retrain']['epochs']} epochs, NS's "
            f"after {ns['search']['epochs']} dense epochs and retrained "
            f"{ns['retrain']['epochs']} ({start}); " + _noise_note(eb["data"].get("test"), eb)
        )
    return reasons


def _noise_note(test_images: int | None, eb: dict[str, Any]) -> str:
    """The sampling noise of a difference of two top-1 scores on ``test_images`` images."""
    if not test_images:
        return "the test set size is not recorded"
    top1 = eb["accuracy"]["test_top1"]
    sigma = 100 * math.sqrt(2 * top1 * (1 - top1) / test_images)
    return f"on {test_images} test images such a difference has a standard error of {sigma:.2f}"


def _speed_note(report: dict[str, Any]) -> str:
    """How much faster per epoch the slim net trained than the dense one, against its MACs."""
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    seconds = report["timing"]["seconds_per_phase"]
    if not {"search", "retrain"} <= phases.keys():
        return "per-phase timing unavailable"
    per_epoch = {k: seconds[k] / max(phases[k]["epochs"], 1) for k in ("search", "retrain")}
    macs = phases["retrain"]["macs_per_sample"] / phases["search"]["macs_per_sample"]
    time_share = per_epoch["retrain"] / per_epoch["search"]
    note = (
        f"EB's slim epochs took {time_share:.0%} of a dense epoch's time at {macs:.0%} of its MACs"
    )
    if time_share > 1.25 * macs:
        note += " (the slim net speeds up less than its MACs on this CPU)"
    return note


def _loads(row: dict[str, Any]) -> str:
    before, after = row["load_average"]
    return f"{before:.1f}->{after:.1f}"


def markdown(result: dict[str, Any], plot: str | None) -> str:
    """The results page: machine, config, the side-by-side table, the targets."""
    config = result["recipe"]
    train, data, prune = config["train"], config["data"], config["prune"]
    model = config["model"]
    lines = [
        "# EB Train vs baselines on Fashion-MNIST",
        "",
        machine_line(result["machine"]),
        f"Budget `{result['budget']}`; the {len(result['rows'])} runs took "
        f"{result['wall_seconds'] / 60:.1f} min in all, one after the other, the last finishing "
        f"{result['last_finished']}; the 1-minute load average of this shared host ranged "
        f"{result['load_average_range'][0]:.1f}-{result['load_average_range'][1]:.1f} "
        "(per run in the JSON).",
        "Runs started: "
        + ", ".join(
            f"{w['method']} p={w['ratio']:g} {w['machine']['date'][11:16]}"
            for w in result["walls"]
            if w.get("machine")
        )
        + " (UTC).",
        *([f"Note: {result['note']}"] if result.get("note") else []),
        "",
        f"Config: `{model['name']}` {model['kwargs']}, {data['name']} {data['image_size']} px, "
        f"{data['train_subset'] or 'all'} train / {data['test_subset'] or 'all'} test images, "
        f"{train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']:g} "
        f"(x{train['gamma']:g} at {train['milestones']}), wd {train['weight_decay']:g}; "
        f"BN-L1 s = {prune['sparsity']:g}; Early-Bird epsilon {prune['epsilon']:g}, window "
        f"{prune['window']}; {prune['scope']} channel ranking. Full recipe in the JSON.",
        "",
        "| method | p | top-1 % | train FLOPs | train s | wall s | params | MACs | ticket epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ticket = f"{r['ticket_epoch']}" + ("" if r["emerged"] else " (not emerged)")
        lines.append(
            f"| {r['method']} | {r['ratio']:g} | {100 * r['test_top1']:.2f} | "
            f"{r['total_flops']:.3e} | {r['seconds']:.0f} | {r['wall_seconds']:.0f} | "
            f"{r['params']:,} | {r['macs']:,} | {ticket} |"
        )
    lines += [
        "",
        "## Targets: EB against network slimming (NS), same run",
        "",
        f"| p | FLOPs NS/EB (>= {FLOPS_TARGET}) | wall NS/EB (>= {TIME_TARGET}) | "
        f"top-1 EB - NS (>= -{ACCURACY_TOLERANCE}) |",
        "|---|---|---|---|",
    ]
    for v in result["targets"]:
        lines.append(
            f"| {v['ratio']:g} | {v['flops_ratio']:.2f}x {_mark(v['flops_met'])} | "
            f"{v['wall_ratio']:.2f}x {_mark(v['time_met'])} | "
            f"{v['accuracy_points']:+.2f} pts {_mark(v['accuracy_met'])} |"
        )
    missed = [(v["ratio"], why) for v in result["targets"] for why in v["why"]]
    if missed:
        lines += ["", "Why targets were missed:", ""]
        lines += [f"- p={ratio:g}: {why}" for ratio, why in missed]
    lines += [
        "",
        "train s: the training passes (ledger); wall s: the whole run (search, evaluation after "
        "every epoch, slimming, retraining, export), measured around each run. A wall time "
        "marked resumed in the JSON misses the part before the interruption. How tickets drawn "
        "at each epoch retrain: eb_emergence.md (the paper's Figure 1).",
    ]
    if plot:
        lines += ["", f"![accuracy vs training FLOPs]({plot})"]
    return "\n".join(lines) + "\n"


def _mark(met: bool) -> str:
    return "met" if met else "**MISSED**"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion_mnist_vgg_p30")
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--data-root", default=None, help="data folder (default: the recipe's)")
    parser.add_argument("--runs", type=Path, help="run folders (default runs/bench_<stem>)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="<results>/<stem>.{json,md} (default: by budget)")
    # One thread by default: on this 2-core host two threads ran 1.5x faster when it was quiet
    # but 4x slower at load average 4 (other jobs), so a shared host gets the safe choice.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    parser.add_argument("--note", default="", help="a provenance note printed on the page")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stem = args.stem or budget_stem("eb_vs_baselines", args.budget)
    runs = args.runs or Path("runs") / f"bench_{stem}"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    recipe = budget_recipe(args.recipe, args.budget, args.overrides)

    walls = {}
    for method in methods:
        for ratio in ratios:
            walls[(method, ratio)] = run_one(
                recipe,
                runs,
                method,
                ratio,
                data_root=args.data_root,
                device=args.device,
                progress=not args.quiet,
            )
    compared = run_compare(
        recipe, runs, methods=methods, ratios=ratios, data_root=args.data_root, device=args.device
    )
    rows = [
        {**row, **_wall_fields(walls[(row["method"], row["ratio"])])} for row in compared["rows"]
    ]
    first = walls[(methods[0], ratios[0])]
    result = {
        "benchmark": "eb_vs_baselines",
        # The first run's machine and start date (re-rendering finished runs changes neither).
        "machine": first.get("machine") or machine_info(args.device),
        "budget": args.budget,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "recipe": recipe.to_dict(),
        "methods": methods,
        "ratios": ratios,
        "wall_seconds": sum(w["wall_seconds"] for w in walls.values()),
        "last_finished": max(w["finished"] for w in walls.values()),
        "load_average_range": _load_range(walls.values()),
        "runs": str(runs),
        "rows": rows,
        "walls": [{"method": m, "ratio": p, **w} for (m, p), w in walls.items()],
        "targets": assess(rows, runs, recipe.train.epochs),
        "note": args.note,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    plot = runs / "accuracy_vs_flops.png"
    plot_name = f"{stem}_accuracy_vs_flops.png" if plot.is_file() else None
    if plot_name:
        shutil.copyfile(plot, args.results / plot_name)
    (args.results / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    text = markdown(result, plot_name)
    (args.results / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.results / stem}.json and .md")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
