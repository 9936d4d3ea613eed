"""``ebcompress compare``: several methods and ratios on one recipe, side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ebcompress.cli.app import app
from ebcompress.cli.options import METHODS_EPILOG, RECIPE_HELP, parse_ratios
from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS
from ebcompress.run.paths import ComparePaths


@app.command(epilog=METHODS_EPILOG)
def compare(
    recipe: str = typer.Option(..., "--recipe", "-r", help=RECIPE_HELP),
    methods: str = typer.Option(
        ",".join(METHODS.names()), help="comma-separated method keys (see below)"
    ),
    ratios: str | None = typer.Option(None, help="comma-separated ratios (default: the recipe's)"),
    data: str | None = typer.Option(None, "--data", help="data set folder (overrides data.root)"),
    out: Path | None = typer.Option(None, "--out", help="folder (default runs/compare_<recipe>)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="dotted override, e.g. --set train.lr=0.05"
    ),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
    shared_dir: Path | None = typer.Option(
        None,
        "--shared-dir",
        help="folder of the shared searches (default OUT/shared); compares of one recipe that "
        "differ only in retrain.* may name the same one",
    ),
    independent: bool = typer.Option(
        False,
        "--independent",
        help="train every (method, ratio) on its own instead of sharing each method's search "
        "between its ratios (same results, more training; for measuring the sharing)",
    ),
) -> None:
    """Run each method at each ratio (finished runs are kept) and write compare.{md,csv,json}."""
    from ebcompress.engine import distributed as dist
    from ebcompress.recipe import load_recipe
    from ebcompress.run.compare import run_compare

    resolved = load_recipe(recipe, overrides)
    keys = [m.strip() for m in methods.split(",") if m.strip()]
    for key in keys:
        if key not in METHODS:
            raise UserError(f"--methods: {METHODS.unknown(key)}")
    points = parse_ratios(ratios, "--ratios") if ratios else [resolved.prune.ratio]
    dist.init_from_env(device)
    folder = out or Path("runs") / f"compare_{resolved.name}"
    result = run_compare(
        resolved,
        folder,
        methods=keys,
        ratios=points,
        data_root=data,
        device=device,
        shared=not independent,
        shared_dir=shared_dir,
    )
    if dist.is_main():
        print_table(result)
        written = ComparePaths(folder)
        Console().print(f"written: {written.md}, {written.csv.name}, {written.json.name}")


def print_table(result: dict) -> None:
    rows = result["rows"]
    table = Table(title=f"compare: {result['recipe']}")
    for column in ("method", "ratio", "top-1 %", "train FLOPs", "wall s", "params", "MACs"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for r in rows:
        table.add_row(
            r["method"],
            f"{r['ratio']:g}",
            f"{r['test_top1'] * 100:.2f}",
            f"{r['total_flops']:.3e}",
            f"{r['seconds']:.0f}",
            f"{r['params']:,}",
            f"{r['macs']:,}",
        )
    for ratio, gain in result["improvement"].items():
        table.add_row(
            f"eb vs {gain['competitor']}",
            ratio,
            f"{gain['accuracy_points']:+.2f} pts",
            f"{gain['flops_ratio']:.2f}x fewer",
            f"{gain['time_ratio']:.2f}x",
            "",
            "",
        )
    Console().print(table)
    for method, cost in result.get("cost", {}).items():
        if cost["shared_flops"] < cost["per_ratio_flops"]:
            Console().print(
                f"{method}: trained {cost['shared_flops']:.3e} FLOPs in "
                f"{cost['shared_seconds']:.0f} s for all its ratios, its search shared "
                f"(separate runs: {cost['per_ratio_flops']:.3e} FLOPs)"
            )
