"""``ebcompress plan``: what a recipe will cost on this machine, before training it.

Torch and the rest are imported inside the command, so ``ebcompress plan --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ebcompress.cli.app import app
from ebcompress.cli.options import RECIPE_HELP

if TYPE_CHECKING:  # imported where used, off the CLI's start-up path
    from ebcompress.cost.forecast import Forecast

METHOD_TITLES = {"dense": "dense", "eb": "EB", "ns": "NS"}


@app.command()
def plan(
    recipe: str = typer.Option(..., "--recipe", "-r", help=RECIPE_HELP),
    data: str | None = typer.Option(None, "--data", help="data set folder (overrides data.root)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="dotted override, e.g. --set train.epochs=60"
    ),
    device: str | None = typer.Option(
        None, help="cpu | cuda | cuda:1 (default: cuda if available)"
    ),
    steps: int = typer.Option(
        20, min=1, help="training steps timed per network and epoch (after a warm-up epoch)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    out: Path | None = typer.Option(
        None, "--out", help="also write the forecast to this JSON file"
    ),
) -> None:
    """Forecast training FLOPs, time and energy per phase of dense training, EB Train and
    network slimming, from a few steps timed here (`prune --plan` records one in the run)."""
    from ebcompress.errors import UserError
    from ebcompress.recipe import load_recipe
    from ebcompress.run.plan import make_forecast

    resolved = load_recipe(recipe, list(overrides))
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise UserError(f"--out {str(out)!r}: expected a file in an existing folder")
    forecast = make_forecast(resolved, data_root=data, device=device, steps=steps)
    if out is not None:
        forecast.save(out)
    if as_json:
        estimates = [asdict(e) for e in forecast.estimates()]
        print(json.dumps({"forecast": forecast.to_dict(), "estimates": estimates}, indent=1))
        return
    print_forecast(forecast)
    if out is not None:
        Console().print(f"forecast written to {escape(str(out))}")


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"


def _count(value: float, unit: str) -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def print_forecast(forecast: Forecast) -> None:
    """The forecast as one table: a row per phase of each scenario, then its total."""
    machine = forecast.machine
    where = machine.get("gpu") or machine.get("processor") or "?"
    load = machine.get("load_average_1min")
    busy = "" if load is None else f", load {load:.1f}"
    table = Table(
        title=f"{forecast.recipe} on {forecast.device} ({where}, "
        f"{machine.get('torch_threads', '?')} threads{busy}; {forecast.timed_steps} steps "
        "timed per network)"
    )
    table.add_column("method: scenario")
    table.add_column("phase")
    for column in ("epochs", "FLOPs", "training", "with eval", "energy"):
        table.add_column(column, justify="right")
    rows = forecast.estimates()
    measured = any(r.joules is not None for r in rows)
    for scenario in forecast.scenarios:
        mine = [r for r in rows if r.method == scenario.method and r.label == scenario.label]
        title = f"{METHOD_TITLES.get(scenario.method, scenario.method)}: {scenario.label}"
        for row in mine:
            table.add_row(
                escape(title),
                row.phase,
                str(row.epochs),
                _count(row.flops, "") + ("*" if row.macs_estimated else ""),
                _seconds(row.train_seconds),
                _seconds(row.wall_seconds),
                _energy([row.joules]),
            )
            title = ""
        if len(mine) > 1:
            table.add_row(
                "",
                "[bold]total[/]",
                str(sum(r.epochs for r in mine)),
                _count(sum(r.flops for r in mine), ""),
                _seconds(sum(r.train_seconds for r in mine)),
                f"[bold]{_seconds(sum(r.wall_seconds for r in mine))}[/]",
                _energy([r.joules for r in mine]),
            )
        table.rows[-1].end_section = True
    console = Console()
    console.print(table)
    console.print(
        "EB = EB Train, NS = network slimming; training = the training passes (the run's "
        "cost table), with eval = the whole phase with the evaluation after every epoch; "
        "* estimated MACs (a stand-in ticket)"
        + ("" if measured else "; energy not measured here (no NVML or RAPL counter)")
    )
    setup = ", ".join(f"{k} {v:.1f} s" for k, v in forecast.setup_seconds.items())
    console.print(f"one-off work timed here (not in the phases): {escape(setup)}")
    for note in forecast.notes:
        console.print(f"- {escape(note)}")


def _energy(joules: list[float | None]) -> str:
    return "—" if None in joules else _count(sum(j or 0.0 for j in joules), "J")
