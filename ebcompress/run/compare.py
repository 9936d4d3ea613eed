"""Several methods and ratios on one recipe, side by side: the paper's Table 2 shape.

Each (method, ratio) runs through :func:`ebcompress.run.pipeline.run_pipeline` into its own run
directory ``OUT/<method>_p<ratio>``. A finished run is read back, not run again; an
interrupted one resumes. What the ratios of one method have in common is trained once
(:mod:`ebcompress.run.shared`: one Early-Bird search for every ratio, one dense training for
network slimming, LT and ThiNet) unless ``shared=False``. The table has one row per method
with retrain accuracy and training FLOPs per ratio (the paper's count: the search up to that
ratio's ticket plus its retraining), the compare's real cost, and an "improvement" row: EB
against the strongest competitor (the most accurate other method) at each ratio.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ebcompress.atomic import write_text_atomic
from ebcompress.engine import distributed as dist
from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS
from ebcompress.recipe import Recipe, validate_recipe
from ebcompress.report.build import build_report
from ebcompress.report.plots_compare import plot_accuracy_vs_flops
from ebcompress.report.run_report import RunReport, describe_saving
from ebcompress.run.init_weights import with_init_checksum
from ebcompress.run.lock import run_lock
from ebcompress.run.paths import ComparePaths, RunPaths
from ebcompress.run.pipeline import run_pipeline
from ebcompress.run.shared import dense_search_dir, searched, share_early_bird_search, shared_cost
from ebcompress.run.state import existing_state


def _is_finished(run_dir: Path) -> bool:
    """Finished and reported: a run killed while drawing its plots is resumed instead."""
    state = existing_state(run_dir)
    return state is not None and state.finished and RunPaths(run_dir).report_json.is_file()


def run_compare(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    *,
    methods: Sequence[str],
    ratios: Sequence[float],
    data_root: str | None = None,
    device: str | None = None,
    progress: bool = True,
    shared: bool = True,
    shared_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run every (method, ratio) not yet finished, then write compare.{json,csv,md}.

    ``shared`` trains each method's shared phases once (module docstring), in
    ``shared_dir`` (default ``OUT/shared``: compares of one recipe that differ only in its
    ``retrain`` or ``export`` sections may name one folder); ``False`` runs every (method,
    ratio) on its own, as separate ``ebcompress prune`` runs would. One
    process at a time writes a compare folder. Under data parallelism every rank trains;
    rank 0 alone reads the runs back and writes the comparison (the others return an empty
    dict, as :func:`run_pipeline` does)."""
    if not methods:
        raise UserError("--methods is empty; give e.g. --methods eb,ns")
    for ratio in ratios:
        if not 0 < ratio < 1:
            raise UserError(f"--ratios: {ratio:g} is outside (0, 1)")
    budget = recipe.prune.draw_options().budget
    if budget is not None:  # every "ratio" would draw the same budget ticket
        raise UserError(
            f"compare varies prune.ratio, which a budget ({budget.describe()}) replaces; "
            "drop prune.target_macs / target_params, or run ebcompress prune once per budget"
        )
    out = ComparePaths(out_dir, shared_dir)
    with contextlib.ExitStack() as locks:
        if dist.is_main():
            for folder in (out.root, *([out.shared_root] if shared_dir is not None else [])):
                folder.mkdir(parents=True, exist_ok=True)
                locks.enter_context(run_lock(folder))
        rows = _run_all(recipe, out, methods, ratios, data_root, device, progress, shared)
    return write_compare(out.root, recipe.name, rows) if dist.is_main() else {}


def _run_all(
    recipe: Recipe,
    out: ComparePaths,
    methods: Sequence[str],
    ratios: Sequence[float],
    data_root: str | None,
    device: str | None,
    progress: bool,
    shared: bool,
) -> list[dict[str, Any]]:
    # the checksum of model.init, once: every run's recipe.yaml and every shared folder's
    # claim record it, so a file whose content changed is never reused
    base = with_init_checksum(recipe).to_dict()
    rows = []
    for method in methods:
        prune = {**base["prune"], "method": method}
        if METHODS.get(method).shares != "dense":  # dense_epochs sets NS's, LT's, ThiNet's
            prune.pop("dense_epochs", None)
        variants = {
            ratio: validate_recipe(
                {**base, "prune": {**prune, "ratio": ratio}}, where=f"compare {method} p={ratio:g}"
            )
            for ratio in ratios
        }
        shares = METHODS.get(method).shares if shared else None
        if shares == "search":
            share_early_bird_search(
                variants, out, data_root=data_root, device=device, progress=progress
            )
        for ratio, variant in variants.items():
            run_dir = out.run(method, ratio)
            if not _is_finished(run_dir):
                dense = shares == "dense" and not searched(run_dir)
                run_pipeline(
                    variant,
                    run_dir,
                    data_root=data_root,
                    resume=run_dir.exists(),
                    device=device,
                    progress=progress,
                    shared_search_dir=dense_search_dir(out, method, variant) if dense else None,
                )
            if dist.is_main():
                rows.append(_row(method, ratio, run_dir.name, build_report(run_dir)))
    return rows


def _row(method: str, ratio: float, run_name: str, report: RunReport) -> dict[str, Any]:
    results, health = report.results, report.health
    search = results.cost.ledger.phases.get("search")
    return {
        "method": method,
        "ratio": ratio,
        "run_dir": run_name,
        "test_top1": results.accuracy.test_top1,
        "total_flops": results.cost.total_flops,
        "seconds": results.cost.total_seconds,
        "search_flops": search.training_flops if search else 0,
        "search_seconds": search.seconds if search else 0.0,
        "shared_search": results.search.extra.get("shared_search"),
        "params": results.model.slim.params,
        "macs": results.model.slim.macs,
        "search_epochs": results.search.epochs,
        "ticket_epoch": results.ticket.epoch,
        "emerged": results.ticket.emerged,
        "health": health.status,
        "health_flags": " | ".join(health.flags),
    }


def improvement(rows: list[dict[str, Any]], reference: str = "eb") -> dict[float, dict[str, Any]]:
    """Per ratio: the reference method against the most accurate other method."""
    out: dict[float, dict[str, Any]] = {}
    for ratio in sorted({r["ratio"] for r in rows}):
        at = [r for r in rows if r["ratio"] == ratio]
        ours = next((r for r in at if r["method"] == reference), None)
        # a competitor whose slim model failed its health check is no benchmark to beat
        others = [r for r in at if r["method"] != reference and r.get("health") != "failed"]
        if ours is None or not others:
            continue
        best = max(others, key=lambda r: r["test_top1"])
        out[ratio] = {
            "competitor": best["method"],
            "accuracy_points": (ours["test_top1"] - best["test_top1"]) * 100,
            "flops_ratio": best["total_flops"] / max(ours["total_flops"], 1),
            "time_ratio": best["seconds"] / max(ours["seconds"], 1e-9),
            "health": ours.get("health", "unknown"),
        }
    return out


def write_compare(out: Path, recipe_name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """compare.json, compare.csv, compare.md (+ accuracy_vs_flops.png) in ``out``."""
    paths = ComparePaths(out)
    paths.root.mkdir(parents=True, exist_ok=True)
    gains = improvement(rows)
    cost = shared_cost(rows)
    result = {
        "recipe": recipe_name,
        "rows": rows,
        "improvement": {f"{k:g}": v for k, v in gains.items()},
        "cost": cost,
    }
    write_text_atomic(paths.json, json.dumps(result, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(paths.csv, buffer.getvalue())
    plot_accuracy_vs_flops(rows, paths.plot)
    write_text_atomic(paths.md, render_table(recipe_name, rows, gains, cost, paths.plot.name))
    return result


def render_table(
    recipe_name: str,
    rows: list[dict[str, Any]],
    gains: dict[float, dict[str, Any]],
    cost: dict[str, dict[str, float]],
    plot: str,
) -> str:
    """The paper's Table 2 shape as GitHub markdown, with what the compare really trained."""
    ratios = sorted({r["ratio"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["ratio"]): r for r in rows}
    head = ["method"]
    head += [f"top-1 p={p:g}" for p in ratios]
    head += [f"train FLOPs p={p:g}" for p in ratios]
    head += ["train s (sum of runs)", "trained once: FLOPs", "trained once: s", "health"]
    lines = [
        f"# Compare: {recipe_name}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in methods:
        accs = [_pct(cell.get((m, p), {}).get("test_top1")) for p in ratios]
        flops = [_sci(cell.get((m, p), {}).get("total_flops")) for p in ratios]
        secs = sum(cell[(m, p)]["seconds"] for p in ratios if (m, p) in cell)
        once = [_sci(cost[m]["shared_flops"]), f"{cost[m]['shared_seconds']:.0f}"]
        health = ", ".join(
            f"p={p:g}: {cell[(m, p)]['health']}"
            for p in ratios
            if (m, p) in cell and cell[(m, p)]["health"] != "ok"
        )
        cells = [m, *accs, *flops, f"{secs:.0f}", *once, health or "ok"]
        lines.append("| " + " | ".join(cells) + " |")
    if gains:
        acc = [_signed(gains[p]["accuracy_points"]) if p in gains else "" for p in ratios]
        fl = [_saving(gains[p]) if p in gains else "" for p in ratios]
        tail = ["", "", "", ""]
        lines.append("| improvement (eb vs best other) | " + " | ".join([*acc, *fl, *tail]) + " |")
        lines += ["", "Strongest competitor per ratio (most accurate non-EB method): "]
        lines[-1] += ", ".join(f"p={p:g}: {g['competitor']}" for p, g in gains.items())
    lines += [
        "",
        "train FLOPs p=... is each ratio's own cost as the paper counts it: the search up to "
        "that ratio's ticket plus its retraining, summed over the runs in train s. trained "
        "once is what this compare really trained: a search several ratios shared (one "
        "Early-Bird search watching them all, one dense training) counts once.",
    ]
    flagged = [r for r in rows if r["health"] not in ("ok", "unknown")]
    if flagged:
        lines += ["", "Health flags (a failed run's FLOPs are no saving):", ""]
        lines += [
            f"- {r['method']} p={r['ratio']:g} ({r['health']}): {r['health_flags']}"
            for r in flagged
        ]
    lines += ["", f"![accuracy vs training FLOPs]({plot})"]
    return "\n".join(lines) + "\n"


def _saving(gain: dict[str, Any]) -> str:
    if gain.get("health") == "failed":
        return "no saving (eb failed its health check)"
    return describe_saving(gain["flops_ratio"])


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.2f}"


def _sci(value: float | None) -> str:
    return "" if value is None else f"{value:.3e}"


def _signed(points: float) -> str:
    return f"{points:+.2f} pts"
