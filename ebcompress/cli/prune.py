"""``ebcompress prune``: run one pruning method end to end into a run directory.

Like every command module, it imports torch (the engine, the recipe's registries) inside the
command: ``ebcompress --help`` and ``ebcompress prune --help`` read only the method catalogue.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from ebcompress.cli.app import app
from ebcompress.cli.options import METHODS_EPILOG, RECIPE_HELP, parse_ratios
from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS
from ebcompress.run.paths import RunPaths

if TYPE_CHECKING:  # imported where used, off the CLI's start-up path
    from ebcompress.cost.forecast import Forecast
    from ebcompress.recipe import Recipe
    from ebcompress.report.run_report import RunReport


@app.command(epilog=METHODS_EPILOG)
def prune(
    recipe: str = typer.Option(..., "--recipe", "-r", help=RECIPE_HELP),
    method: str | None = typer.Option(
        None, help=f"overrides prune.method: {' | '.join(METHODS.names())} (see below)"
    ),
    data: str | None = typer.Option(None, "--data", help="data set folder (overrides data.root)"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/<recipe>)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="dotted override, e.g. --set train.lr=0.05"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
    force_resume: bool = typer.Option(
        False, "--force-resume", help="resume even though the recipe changes the result"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out"),
    device: str | None = typer.Option(
        None, help="cpu | cuda | cuda:1 (default: cuda if available)"
    ),
    ratios: str | None = typer.Option(
        None,
        help="comma-separated ratios: one run per ratio in OUT/<method>_p<ratio>, sharing "
        "their search as `ebcompress compare` does (they resume when run again)",
    ),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="forecast the run's cost first (as `ebcompress plan`) and keep it as "
        "forecast.json; report.md then puts each phase beside its forecast",
    ),
) -> None:
    """Search for a ticket, slim the network, retrain it, export it and write the report."""
    from ebcompress.engine import distributed as dist
    from ebcompress.recipe import load_recipe
    from ebcompress.report.build import build_report, write_report
    from ebcompress.run.pipeline import run_pipeline

    sets = [*overrides, f"prune.method={method}"] if method else list(overrides)
    resolved = load_recipe(recipe, sets)
    dist.init_from_env(device)
    run_dir = out or Path("runs") / resolved.name
    if ratios is not None:
        if plan:
            raise UserError("--plan forecasts one run; drop --ratios (or use `ebcompress plan`)")
        _prune_each_ratio(resolved, run_dir, parse_ratios(ratios, "--ratios"), data, device)
        return
    forecast = (
        _forecast(resolved, run_dir, data, device, resume or force_resume, overwrite)
        if plan
        else None
    )
    run_pipeline(
        resolved,
        run_dir,
        data_root=data,
        resume=resume or force_resume,
        overwrite=overwrite,
        device=device,
        force_resume=force_resume,
    )
    if forecast is not None and dist.is_main():
        # The run directory takes files only once the run has prepared it, so the forecast
        # made before it is written now and the report redrawn with it.
        forecast.save(RunPaths(run_dir).forecast)
        write_report(run_dir)
    if dist.is_main():
        print_summary(build_report(run_dir), run_dir)


def _forecast(
    recipe: Recipe,
    run_dir: Path,
    data: str | None,
    device: str | None,
    resume: bool,
    overwrite: bool,
) -> Forecast | None:
    """``--plan``'s forecast, made before training (None: a resumed run keeps its own).
    The run directory's checks come first, so a refused run costs no forecast."""
    from ebcompress.engine import distributed as dist
    from ebcompress.run.lock import refuse_if_locked
    from ebcompress.run.plan import make_forecast
    from ebcompress.run.state import existing_state, prepare_run_dir

    if dist.world_size() > 1:
        raise UserError("--plan times one process; run `ebcompress plan` without torchrun")
    if overwrite:
        if run_dir.is_dir():
            refuse_if_locked(run_dir)  # the pipeline deletes the rest itself
    else:
        prepare_run_dir(run_dir, resume=resume, overwrite=False)  # creates it when allowed
    if resume and RunPaths(run_dir).forecast.is_file():
        return None
    state = existing_state(run_dir) if resume else None
    if state is not None and state.finished:
        raise UserError(
            f"--plan: {str(run_dir)!r} holds a finished run, and a forecast comes before the "
            "training; run it again with --overwrite --plan, or use `ebcompress plan`"
        )
    Console().print("forecasting the run's cost (`ebcompress plan`) ...")
    return make_forecast(recipe, data_root=data, device=device)


def _prune_each_ratio(
    recipe: Recipe, folder: Path, ratios: list[float], data: str | None, device: str | None
) -> None:
    """``prune --ratios``: a compare of the recipe's one method."""
    from ebcompress.cli.compare import print_table
    from ebcompress.engine import distributed as dist
    from ebcompress.run.compare import run_compare

    result = run_compare(
        recipe, folder, methods=[recipe.prune.method], ratios=ratios, data_root=data, device=device
    )
    if dist.is_main():
        print_table(result)
        Console().print(f"runs in {folder}; side by side in {folder / 'compare.md'}")


def print_summary(report: RunReport, run_dir: Path) -> None:
    """The end-of-run panel: ticket, accuracy, size, cost, health, and where things are.

    A run that failed its health check says so in one highlighted line, and its FLOPs figure
    is not presented as a saving."""
    from ebcompress.report.build import health_headline
    from ebcompress.report.run_report import describe_saving

    results, health = report.results, report.health
    t, m, c, acc = results.ticket, results.model, results.cost, results.accuracy
    when = f"epoch {t.epoch}" + ("" if t.emerged else " (did not emerge; newest mask)")
    headline = health_headline(health)
    flops = f"training FLOPs {c.total_flops:.3e} vs {c.dense_reference_flops:.3e} dense"
    if headline:
        flops += " (no saving: the slim model is broken)"
    else:
        flops += f" ({describe_saving(c.saving_vs_dense)})"
    lines = [
        f"[bold]{results.method}[/] ticket at p={t.ratio:g}: {when}",
        f"test top-1 {acc.test_top1 * 100:.2f} %   top-5 {acc.test_top5 * 100:.2f} %",
        f"params {m.dense.params:,} -> {m.slim.params:,}   "
        f"MACs {m.dense.macs:,} -> {m.slim.macs:,} ({m.mac_reduction:.2f}x)",
        escape(flops),
    ]
    if headline:
        lines.append(f"[bold red]{escape(headline)}[/]")
    else:
        dense = health.dense_top1_at_ticket
        shown = "" if dense is None else f", dense at the ticket {dense * 100:.2f} %"
        lines.append(f"health: {health.status}{shown}")
        lines += [f"[yellow]- {escape(flag)}[/]" for flag in health.flags]
    paths = RunPaths(run_dir)
    lines += [f"report: {paths.report_md}", f"slim model: {paths.model}"]
    Console().print(Panel("\n".join(lines), title="ebcompress", expand=False))
