"""report.json, report.md and plots/, rebuilt from a run directory alone (no model needed).

The pipeline records its results in ``state.json``; everything here is derived from that,
``recipe.yaml``, ``metrics.jsonl``, ``ticket.json`` and ``masks/``, so ``ebcompress report
RUN_DIR`` regenerates the same report at any time (report.json byte for byte). Wall-clock
fields live under ``timing`` so runs can be compared without them.

The report layer reads a run directory through ``run.paths``, ``run.state`` and
``run.results``, which import nothing of the pipeline; the pipeline imports this module to
write the report at the end of a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ebcompress.atomic import write_text_atomic
from ebcompress.channels.ticket import Ticket
from ebcompress.engine.metrics_file import read_entries
from ebcompress.errors import UserError
from ebcompress.report.distill import cost_notes, macs_cell, training_sentence
from ebcompress.report.forecast import forecast_section
from ebcompress.report.health import RunHealth, assess_run
from ebcompress.report.run_report import RunReport, budget_summary, describe_saving
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import RunResults
from ebcompress.run.state import read_state


def _read_recipe(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{str(path)!r} is not valid YAML ({exc.__class__.__name__})") from None
    return recipe if isinstance(recipe, dict) else None


def build_report(run_dir: str | os.PathLike[str]) -> RunReport:
    """The report of a finished run, from its files alone (without the plots, which
    :func:`write_report` adds once it has drawn them)."""
    paths = RunPaths(run_dir)
    state = read_state(paths.root)
    if not state.finished or state.results is None:
        raise UserError(
            f"the run in {str(paths.root)!r} has not finished (status {state.status!r}); "
            "finish it with `ebcompress prune ... --resume`"
        )
    epochs = read_entries(paths.metrics)
    ticket = Ticket.load(paths.ticket)
    return RunReport(
        results=state.results,
        finished=state.updated,
        recipe=_read_recipe(paths.recipe),
        epochs=epochs,
        health=_health(ticket, state.results, epochs, state.divergences),
        has_masks=paths.masks.is_dir(),
        budget=budget_summary(ticket, state.results),
    )


def _health(
    ticket: Ticket,
    results: RunResults,
    epochs: list[dict[str, Any]],
    divergences: tuple[str, ...],
) -> RunHealth:
    """The run's health verdict, from its files alone."""
    epoch = results.ticket.epoch
    dense = next(
        (
            e["test_top1"]
            for e in epochs
            if e["phase"] == "search" and epoch is not None and e["epoch"] == epoch
        ),
        None,
    )
    return assess_run(
        final_top1=results.accuracy.test_top1,
        ticket=ticket,
        chance_top1=results.data.chance_top1,
        dense_top1_at_ticket=dense,
        emerged=results.ticket.emerged,
        skipped_images=results.data.skipped_images,
        divergence=divergences[-1] if divergences else None,
        teacher_top1=None if results.retrain.distill is None else results.retrain.distill.top1,
    )


def write_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Draw plots/, write report.json and report.md into the run directory, return
    report.json's content.

    ``report["plots"]`` lists the plots written (relative paths) and those skipped with the
    reason (e.g. no ``masks/`` for a method other than EB).
    """
    from ebcompress.report.plots import write_run_plots  # matplotlib only when drawing

    paths = RunPaths(run_dir)
    report = build_report(paths.root)
    report = replace(report, plots=write_run_plots(paths.root, report))
    content = report.to_dict()
    write_text_atomic(paths.report_json, json.dumps(content, indent=1, sort_keys=True) + "\n")
    forecast = forecast_section(paths, report.results)  # forecast.json, when recorded
    write_text_atomic(paths.report_md, render_markdown(report, forecast))
    return content


def _fmt_count(value: float, unit: str = "") -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f} %"


def _image(report: RunReport, name: str, caption: str) -> list[str]:
    path = (report.plots or {}).get("written", {}).get(name)
    return [f"![{caption}]({path})", ""] if path else []


def _summary(report: RunReport) -> list[str]:
    results = report.results
    t, m, acc = results.ticket, results.model, results.accuracy
    schedule = ((report.recipe or {}).get("train") or {}).get("epochs")
    of = f" of {schedule}" if schedule else ""
    if results.search.emerged_epochs is None:
        when = f"Ticket at p = {t.ratio:g} drawn at epoch {t.epoch}{of}"
    elif t.emerged:
        when = f"Early-Bird ticket at p = {t.ratio:g} emerged at epoch {t.epoch}{of}"
    else:
        when = f"No Early-Bird ticket emerged at p = {t.ratio:g}; drawn at epoch {t.epoch}"
    return [
        f"# {results.run} — {results.method}",
        "",
        f"{when} ({t.num_kept} of {t.num_channels} channels kept, "
        f"{t.pruned_fraction * 100:.1f} % pruned).",
        "",
        *_budget_line(report.budget),
        "| | dense | slim | reduction |",
        "|---|---:|---:|---:|",
        f"| params | {_fmt_count(m.dense.params)} | {_fmt_count(m.slim.params)} "
        f"| {m.param_reduction:.2f}x |",
        f"| forward MACs | {_fmt_count(m.dense.macs)} | {_fmt_count(m.slim.macs)} "
        f"| {m.mac_reduction:.2f}x |",
        "",
        f"Test accuracy after retraining: top-1 {_pct(acc.test_top1)}, "
        f"top-5 {_pct(acc.test_top5)}.{_ema_line(report.epochs)}",
        "",
        *_starting_weights(results),
    ]


def _ema_line(epochs: list[dict[str, Any]]) -> str:
    """The last retraining epoch's EMA top-1 (``train.ema``), when the run kept one."""
    last = next((e for e in reversed(epochs) if e.get("phase") == "retrain"), {})
    if last.get("ema_test_top1") is None:
        return ""
    return (
        f" The weights' moving average (`train.ema`) reached top-1 "
        f"{_pct(last['ema_test_top1'])}; the slim network and its exports hold the live weights."
    )


def _starting_weights(results: RunResults) -> list[str]:
    init = results.init
    if init is None:
        return []
    search = results.search.epochs
    dense = "no dense epoch" if search == 0 else f"{search} dense epoch(s)"
    head = ""
    if init.new_head:
        names = ", ".join(f"`{h}`" for h in init.new_head)
        head = f" Its classifier ({names}) did not fit the data and started freshly initialised."
    return [
        f"Started from the weights in `{init.file}` (sha256 `{init.sha256}`).{head} The "
        f"training that produced them is not in the cost below, which counts only what this "
        f"run trained ({dense} before the ticket, then the retraining).",
        "",
    ]


def _budget_line(budget: dict[str, Any] | None) -> list[str]:
    """The budget line: its count, the target share, the share the slim network reached."""
    if budget is None:
        return []
    unit = "MACs" if budget["measure"] == "macs" else "params"
    if budget["within_tolerance"]:
        verdict = "within 2 % below the budget"
    elif budget["achieved"] > budget["target"]:
        verdict = "OVER the budget"
    else:
        verdict = "more than 2 % below the budget: round_to or the limits move whole steps"
    return [
        f"Budget {_fmt_count(budget['target'] * budget['dense'])} {unit} "
        f"(target {budget['target'] * 100:g} % of dense), achieved "
        f"{budget['achieved'] * 100:.1f} % ({_fmt_count(budget['slim'])}, counted on the slim "
        f"network; {verdict}); the search cut the ranking at p = {budget['ratio']:.3f}.",
        "",
    ]


def health_headline(health: RunHealth) -> str | None:
    """The one highlighted line of a run that failed its health check, else None."""
    return f"NOT A SUCCESS: {health.flags[0]}" if health.failed else None


def _health_section(report: RunReport) -> list[str]:
    h = report.health
    headline = health_headline(h)
    lines = ["## Health", ""]
    if headline:
        lines += [f"> **{headline}**", ""]

    def pct(value: float | None) -> str:
        return "unknown" if value is None else _pct(value)

    lines += [
        f"Status: **{h.status}**.",
        "",
        "| check | value |",
        "|---|---|",
        f"| dense top-1 at the ticket's epoch | {pct(h.dense_top1_at_ticket)} |",
        f"| final slim top-1 | {pct(h.final_top1)} |",
        f"| chance level (most frequent class) | {pct(h.chance_top1)} |",
        f"| groups at their cap | {len(h.capped_groups)} |",
        f"| groups kept dense | {len(h.kept_dense_groups)} |",
        f"| zero-initialised BatchNorms left out of the ranking | {len(h.zero_init_bns)} |",
        f"| unreadable images skipped | {h.skipped_images} |",
        f"| divergence | {h.divergence or 'none'} |",
        "",
    ]
    lines += [f"- {flag}" for flag in h.flags[1 if headline else 0 :]]
    named = [
        *(f"- capped: `{name}` ({why})" for name, why in h.capped_groups.items()),
        *(f"- kept dense: `{name}`: {why}" for name, why in h.kept_dense_groups.items()),
    ]
    if named:
        lines += ["", "<details><summary>Groups named</summary>", "", *named, "", "</details>"]
    return [*lines, ""]


def _search(report: RunReport) -> list[str]:
    search = report.results.search
    if search.window_max_distances is None:
        return []
    prune = (report.recipe or {}).get("prune") or {}
    lines = [
        "## Early-Bird search",
        "",
        f"The search trained the dense network for {search.epochs} epochs and drew a mask per "
        "epoch at every watched ratio (or the one meeting the budget); a ticket emerges once "
        "the newest mask lies within "
        f"distance epsilon = {prune.get('epsilon', '?')} of every other mask in the FIFO window "
        f"of {prune.get('window', '?')} (You et al., ICLR 2020, Algorithm 1).",
        "",
        "| ratio | emerged at epoch | latest max distance in window |",
        "|---:|---:|---:|",
    ]
    for ratio, distances in search.window_max_distances.items():
        emerged = (search.emerged_epochs or {}).get(ratio)
        latest = next((d for d in reversed(distances) if d is not None), None)
        watched = ratio if report.budget is None else f"budget ({report.budget['measure']})"
        lines.append(
            f"| {watched} | {'—' if emerged is None else emerged} "
            f"| {'window not full' if latest is None else f'{latest:.4f}'} |"
        )
    return [
        *lines,
        "",
        *_image(report, "mask_distance_matrix", "pairwise mask distance between epochs"),
        *_image(report, "emergence", "max mask distance in the window per epoch"),
    ]


def _channels(report: RunReport) -> list[str]:
    image = _image(report, "channels_per_layer", "dense and kept channels per group")
    return ["## Channels per group", "", *image] if image else []


def _training(report: RunReport) -> list[str]:
    r = report.results.retrain
    how = (
        f"a restarted schedule of {r.end_epoch} epochs"
        if r.schedule == "restart"
        else f"epochs {r.start_epoch + 1} to {r.end_epoch} of the dense schedule"
    )
    lines = [
        "## Training",
        "",
        f"Retraining ({r.mode}) trained the slim network on {how}; the cost table gives "
        "what it cost (phase `retrain`)." + training_sentence(report.results, _fmt_count),
        "",
        *_image(report, "curves", "loss and accuracy per epoch"),
    ]
    if report.epochs:
        # The EMA column only for runs that kept one (train.ema); "-" for its epochs without.
        ema = any(e.get("ema_test_top1") is not None for e in report.epochs)

        def ema_cell(e: dict[str, Any]) -> str:
            value = e.get("ema_test_top1")
            return "" if not ema else f" {'-' if value is None else _pct(value)} |"

        lines += [
            f"<details><summary>Per-epoch metrics ({len(report.epochs)} epochs)</summary>",
            "",
            "| phase | epoch | lr | train loss | train top-1 | test loss | test top-1 "
            "| test top-5 |" + (" EMA test top-1 |" if ema else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if ema else ""),
            *(
                f"| {e['phase']} | {e['epoch']} | {e['lr']:.4g} | {e['train_loss']:.4f} "
                f"| {_pct(e['train_top1'])} | {e['test_loss']:.4f} | {_pct(e['test_top1'])} "
                f"| {_pct(e['test_top5'])} |{ema_cell(e)}"
                for e in report.epochs
            ),
            "",
            "</details>",
            "",
        ]
    return lines


def _cost(report: RunReport) -> list[str]:
    c = report.results.cost
    seconds = c.seconds_per_phase
    teacher = " + 2 x teacher MACs x samples" if any(p.teacher_flops for p in c.phases) else ""
    lines = [
        f"## Training cost (FLOPs = 3 x 2 x MACs x samples{teacher})",
        "",
        "| phase | MACs / sample | samples | epochs | training FLOPs | wall time | energy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in c.phases:
        energy = "not measured" if p.joules is None else _fmt_count(p.joules, "J")
        lines.append(
            f"| {p.phase} | {macs_cell(p, _fmt_count)} | {p.samples} | {p.epochs} "
            f"| {_fmt_count(p.training_flops)} | {seconds.get(p.phase, 0):.1f} s | {energy} |"
        )
    total_energy = "" if c.total_joules is None else f"**{_fmt_count(c.total_joules, 'J')}**"
    return [
        *lines,
        f"| **total** | | | | **{_fmt_count(c.total_flops)}** "
        f"| **{c.total_seconds:.1f} s** | {total_energy} |",
        "",
        *cost_notes(report.results, _fmt_count),
        f"A full dense training of this recipe costs {_fmt_count(c.dense_reference_flops)} "
        f"FLOPs: this run used {100 / c.saving_vs_dense:.1f} % of that, "
        f"{describe_saving(c.saving_vs_dense)}"
        + (
            " — not a saving: the slim model failed its health check."
            if report.health.failed
            else "."
        ),
        "",
        *_image(report, "cost", "training cost against a full dense training"),
    ]


def render_markdown(report: RunReport, forecast: Sequence[str] = ()) -> str:
    """A report that reads well on GitHub, embedding the plots of ``report.plots``;
    ``forecast`` (:func:`~ebcompress.report.forecast.forecast_section`'s lines) follows the
    cost table."""
    lines = [
        *_summary(report),
        *_health_section(report),
        *_search(report),
        *_channels(report),
        *_training(report),
        *_cost(report),
        *forecast,
    ]
    skipped = (report.plots or {}).get("skipped") or {}
    if skipped:
        lines += ["Plots not drawn:", ""]
        lines += [f"- `{name}.png`: {reason}" for name, reason in skipped.items()]
        lines.append("")
    if report.results.ticket.note:
        lines += [f"Note: {report.results.ticket.note}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
