"""Several methods and ratios on one recipe, side by side: the paper's Table 2 shape.

Each (method, ratio) runs through :func:`ebcompress.run.pipeline.run_pipeline` into its own run
directory ``OUT/<method>_p<ratio>``. A finished run is read back, not run again; an
interrupted one resumes. The table has one row per method with retrain accuracy and total
training FLOPs per ratio plus wall time, and an "improvement" row: EB against the strongest
competitor (the most accurate other method) at each ratio.
"""

from __future__ import annotations

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
from ebcompress.recipe import Recipe, validate_recipe
from ebcompress.report.build import build_report
from ebcompress.report.plots_compare import plot_accuracy_vs_flops
from ebcompress.report.run_report import RunReport, describe_saving
from ebcompress.run.paths import ComparePaths, RunPaths
from ebcompress.run.pipeline import run_pipeline
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
) -> dict[str, Any]:
    """Run every (method, ratio) not yet finished, then write compare.{json,csv,md}.

    Under data parallelism every rank trains; rank 0 alone reads the runs back and writes
    the comparison (the others return an empty dict, as :func:`run_pipeline` does)."""
    if not methods:
        raise UserError("--methods is empty; give e.g. --methods eb,ns")
    for ratio in ratios:
        if not 0 < ratio < 1:
            raise UserError(f"--ratios: {ratio:g} is outside (0, 1)")
    out = ComparePaths(out_dir)
    base = recipe.to_dict()
    rows = []
    for method in methods:
        for ratio in ratios:
            variant = validate_recipe(
                {**base, "prune": {**base["prune"], "method": method, "ratio": ratio}},
                where=f"compare {method} p={ratio:g}",
            )
            run_dir = out.run(method, ratio)
            if not _is_finished(run_dir):
                run_pipeline(
                    variant,
                    run_dir,
                    data_root=data_root,
                    resume=run_dir.exists(),
                    device=device,
                    progress=progress,
                )
            if dist.is_main():
                rows.append(_row(method, ratio, run_dir.name, build_report(run_dir)))
    return write_compare(out.root, recipe.name, rows) if dist.is_main() else {}


def _row(method: str, ratio: float, run_name: str, report: RunReport) -> dict[str, Any]:
    results, health = report.results, report.health
    return {
        "method": method,
        "ratio": ratio,
        "run_dir": run_name,
        "test_top1": results.accuracy.test_top1,
        "total_flops": results.cost.total_flops,
        "seconds": results.cost.total_seconds,
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
    result = {
        "recipe": recipe_name,
        "rows": rows,
        "improvement": {f"{k:g}": v for k, v in gains.items()},
    }
    write_text_atomic(paths.json, json.dumps(result, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(paths.csv, buffer.getvalue())
    plot_accuracy_vs_flops(rows, paths.plot)
    write_text_atomic(paths.md, render_table(recipe_name, rows, gains, paths.plot.name))
    return result


def render_table(
    recipe_name: str,
    rows: list[dict[str, Any]],
    gains: dict[float, dict[str, Any]],
    plot: str,
) -> str:
    """The paper's Table 2 shape as GitHub markdown."""
    ratios = sorted({r["ratio"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["ratio"]): r for r in rows}
    head = ["method"]
    head += [f"top-1 p={p:g}" for p in ratios]
    head += [f"train FLOPs p={p:g}" for p in ratios]
    head += ["wall time (s)", "health"]
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
        health = ", ".join(
            f"p={p:g}: {cell[(m, p)]['health']}"
            for p in ratios
            if (m, p) in cell and cell[(m, p)]["health"] != "ok"
        )
        lines.append("| " + " | ".join([m, *accs, *flops, f"{secs:.0f}", health or "ok"]) + " |")
    if gains:
        acc = [_signed(gains[p]["accuracy_points"]) if p in gains else "" for p in ratios]
        fl = [_saving(gains[p]) if p in gains else "" for p in ratios]
        lines.append("| improvement (eb vs best other) | " + " | ".join([*acc, *fl, "", ""]) + " |")
        lines += ["", "Strongest competitor per ratio (most accurate non-EB method): "]
        lines[-1] += ", ".join(f"p={p:g}: {g['competitor']}" for p, g in gains.items())
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
