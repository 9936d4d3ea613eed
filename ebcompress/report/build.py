"""report.json, report.md and plots/, rebuilt from a run directory alone (no model needed).

The pipeline records its results in ``state.json``; everything here is derived from that,
``recipe.yaml``, ``metrics.jsonl``, ``ticket.json`` and ``masks/``, so ``ebcompress report
RUN_DIR`` regenerates the same report at any time (report.json byte for byte). Wall-clock
fields live under ``timing`` so runs can be compared without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ebcompress.channels.ticket import Ticket
from ebcompress.errors import UserError
from ebcompress.report.health import assess_run

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of every phase, in the order they were written."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _read_recipe(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{str(path)!r} is not valid YAML ({exc.__class__.__name__})") from None
    return recipe if isinstance(recipe, dict) else None


def build_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The report of a finished run, from its files alone (without the ``plots`` section,
    which :func:`write_report` adds once it has drawn them)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{str(run_dir)!r} does not exist; give a run directory (runs/NAME)")
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        raise UserError(f"{str(run_dir)!r} holds no ebcompress run (no state.json)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{str(state_path)!r} is not valid JSON (line {exc.lineno})") from None
    if state.get("status") != "finished" or "results" not in state:
        raise UserError(
            f"the run in {str(run_dir)!r} has not finished (status {state.get('status')!r}); "
            "finish it with `ebcompress prune ... --resume`"
        )
    report = json.loads(json.dumps(state["results"]))  # a deep, JSON-clean copy
    cost = report["cost"]
    report["timing"] = {
        "seconds_per_phase": {p["phase"]: p["seconds"] for p in cost["phases"]},
        "total_seconds": cost["total_seconds"],
        "finished": state.get("updated"),
    }
    for phase in cost["phases"]:
        phase.pop("seconds", None)
    cost.pop("total_seconds", None)
    report["recipe"] = _read_recipe(run_dir)
    report["epochs"] = read_metrics(run_dir)
    report["health"] = _health(run_dir, report, state).to_dict()
    report["files"] = {
        "ticket": "ticket.json",
        "model": "model/",
        "masks": "masks/" if (run_dir / "masks").is_dir() else None,
        "plots": "plots/",
        "report_md": REPORT_MD,
    }
    return report


def _health(run_dir: Path, report: dict[str, Any], state: dict[str, Any]) -> Any:
    """The run's :class:`~ebcompress.report.health.RunHealth`, from its files alone."""
    ticket = Ticket.load(run_dir / "ticket.json")
    epoch = report["ticket"]["epoch"]
    dense = next(
        (
            e["test_top1"]
            for e in report["epochs"]
            if e["phase"] == "search" and epoch is not None and e["epoch"] == epoch
        ),
        None,
    )
    data = report.get("data") or {}
    divergences = state.get("divergences") or []
    return assess_run(
        final_top1=report["accuracy"]["test_top1"],
        ticket=ticket,
        chance_top1=data.get("chance_top1"),
        dense_top1_at_ticket=dense,
        emerged=report["ticket"]["emerged"],
        skipped_images=int(data.get("skipped_images") or 0),
        divergence=divergences[-1] if divergences else None,
    )


def write_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Draw plots/, write report.json and report.md into the run directory, return the report.

    ``report["plots"]`` lists the plots written (relative paths) and those skipped with the
    reason (e.g. no ``masks/`` for a method other than EB).
    """
    from ebcompress.report.plots import write_run_plots  # matplotlib only when drawing

    run_dir = Path(run_dir)
    report = build_report(run_dir)
    report["plots"] = write_run_plots(run_dir, report)
    tmp = run_dir / (REPORT_JSON + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / REPORT_JSON)
    (run_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    return report


def _fmt_count(value: float, unit: str = "") -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def describe_saving(saving_vs_dense: float) -> str:
    """``"2.50x fewer FLOPs"``, or ``"1.12x more FLOPs"`` when a run cost more than dense."""
    if saving_vs_dense >= 1:
        return f"{saving_vs_dense:.2f}x fewer FLOPs"
    return f"{1 / saving_vs_dense:.2f}x more FLOPs"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f} %"


def _image(report: dict[str, Any], name: str, caption: str) -> list[str]:
    path = (report.get("plots") or {}).get("written", {}).get(name)
    return [f"![{caption}]({path})", ""] if path else []


def _summary(report: dict[str, Any]) -> list[str]:
    t, m, acc = report["ticket"], report["model"], report["accuracy"]
    schedule = ((report.get("recipe") or {}).get("train") or {}).get("epochs")
    of = f" of {schedule}" if schedule else ""
    if "emerged_epochs" not in report["search"]:
        when = f"Ticket at p = {t['ratio']:g} drawn at epoch {t['epoch']}{of}"
    elif t["emerged"]:
        when = f"Early-Bird ticket at p = {t['ratio']:g} emerged at epoch {t['epoch']}{of}"
    else:
        when = f"No Early-Bird ticket emerged at p = {t['ratio']:g}; drawn at epoch {t['epoch']}"
    return [
        f"# {report['run']} — {report['method']}",
        "",
        f"{when} ({t['num_kept']} of {t['num_channels']} channels kept, "
        f"{t['pruned_fraction'] * 100:.1f} % pruned).",
        "",
        "| | dense | slim | reduction |",
        "|---|---:|---:|---:|",
        f"| params | {_fmt_count(m['dense']['params'])} | {_fmt_count(m['slim']['params'])} "
        f"| {m['param_reduction']:.2f}x |",
        f"| forward MACs | {_fmt_count(m['dense']['macs'])} | {_fmt_count(m['slim']['macs'])} "
        f"| {m['mac_reduction']:.2f}x |",
        "",
        f"Test accuracy after retraining: top-1 {_pct(acc['test_top1'])}, "
        f"top-5 {_pct(acc['test_top5'])}.",
        "",
    ]


def health_headline(health: dict[str, Any]) -> str | None:
    """The one highlighted line of a run that failed its health check, else None."""
    if health.get("status") != "failed":
        return None
    return f"NOT A SUCCESS: {health['flags'][0]}"


def _health_section(report: dict[str, Any]) -> list[str]:
    h = report.get("health")
    if not h:
        return []
    headline = health_headline(h)
    lines = ["## Health", ""]
    if headline:
        lines += [f"> **{headline}**", ""]

    def pct(value: float | None) -> str:
        return "unknown" if value is None else _pct(value)

    lines += [
        f"Status: **{h['status']}**.",
        "",
        "| check | value |",
        "|---|---|",
        f"| dense top-1 at the ticket's epoch | {pct(h['dense_top1_at_ticket'])} |",
        f"| final slim top-1 | {pct(h['final_top1'])} |",
        f"| chance level (most frequent class) | {pct(h['chance_top1'])} |",
        f"| groups at their cap | {len(h['capped_groups'])} |",
        f"| groups kept dense | {len(h['kept_dense_groups'])} |",
        f"| zero-initialised BatchNorms left out of the ranking | {len(h['zero_init_bns'])} |",
        f"| unreadable images skipped | {h['skipped_images']} |",
        f"| divergence | {h['divergence'] or 'none'} |",
        "",
    ]
    lines += [f"- {flag}" for flag in h["flags"][1 if headline else 0 :]]
    named = [
        *(f"- capped: `{name}` ({why})" for name, why in h["capped_groups"].items()),
        *(f"- kept dense: `{name}`: {why}" for name, why in h["kept_dense_groups"].items()),
    ]
    if named:
        lines += ["", "<details><summary>Groups named</summary>", "", *named, "", "</details>"]
    return [*lines, ""]


def _search(report: dict[str, Any]) -> list[str]:
    search = report["search"]
    if "window_max_distances" not in search:
        return []
    prune = (report.get("recipe") or {}).get("prune") or {}
    lines = [
        "## Early-Bird search",
        "",
        f"The search trained the dense network for {search['epochs']} epochs and drew a mask per "
        "epoch at every watched ratio; a ticket emerges once the newest mask lies within "
        f"distance epsilon = {prune.get('epsilon', '?')} of every other mask in the FIFO window "
        f"of {prune.get('window', '?')} (You et al., ICLR 2020, Algorithm 1).",
        "",
        "| ratio | emerged at epoch | latest max distance in window |",
        "|---:|---:|---:|",
    ]
    for ratio, distances in search["window_max_distances"].items():
        emerged = search.get("emerged_epochs", {}).get(ratio)
        latest = next((d for d in reversed(distances) if d is not None), None)
        lines.append(
            f"| {ratio} | {'—' if emerged is None else emerged} "
            f"| {'window not full' if latest is None else f'{latest:.4f}'} |"
        )
    return [
        *lines,
        "",
        *_image(report, "mask_distance_matrix", "pairwise mask distance between epochs"),
        *_image(report, "emergence", "max mask distance in the window per epoch"),
    ]


def _channels(report: dict[str, Any]) -> list[str]:
    image = _image(report, "channels_per_layer", "dense and kept channels per group")
    return ["## Channels per group", "", *image] if image else []


def _training(report: dict[str, Any]) -> list[str]:
    r = report["retrain"]
    schedule = r.get("schedule")
    how = (
        f"a restarted schedule of {r['end_epoch']} epochs"
        if schedule == "restart"
        else f"epochs {r['start_epoch'] + 1} to {r['end_epoch']} of the dense schedule"
    )
    lines = [
        "## Training",
        "",
        f"Retraining ({r['mode']}) trained the slim network on {how}; the cost table gives "
        "what it cost (phase `retrain`).",
        "",
        *_image(report, "curves", "loss and accuracy per epoch"),
    ]
    if report["epochs"]:
        lines += [
            f"<details><summary>Per-epoch metrics ({len(report['epochs'])} epochs)</summary>",
            "",
            "| phase | epoch | lr | train loss | train top-1 | test loss | test top-1 "
            "| test top-5 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {e['phase']} | {e['epoch']} | {e['lr']:.4g} | {e['train_loss']:.4f} "
                f"| {_pct(e['train_top1'])} | {e['test_loss']:.4f} | {_pct(e['test_top1'])} "
                f"| {_pct(e['test_top5'])} |"
                for e in report["epochs"]
            ),
            "",
            "</details>",
            "",
        ]
    return lines


def _cost(report: dict[str, Any]) -> list[str]:
    c, seconds = report["cost"], report["timing"]["seconds_per_phase"]
    lines = [
        "## Training cost (FLOPs = 3 x 2 x MACs x samples)",
        "",
        "| phase | MACs / sample | samples | epochs | training FLOPs | wall time | energy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in c["phases"]:
        energy = "not measured" if p["joules"] is None else _fmt_count(p["joules"], "J")
        lines.append(
            f"| {p['phase']} | {_fmt_count(p['macs_per_sample'])} | {p['samples']} | {p['epochs']} "
            f"| {_fmt_count(p['training_flops'])} | {seconds.get(p['phase'], 0):.1f} s | {energy} |"
        )
    total_energy = "" if c["total_joules"] is None else f"**{_fmt_count(c['total_joules'], 'J')}**"
    return [
        *lines,
        f"| **total** | | | | **{_fmt_count(c['total_flops'])}** "
        f"| **{report['timing']['total_seconds']:.1f} s** | {total_energy} |",
        "",
        f"A full dense training of this recipe costs {_fmt_count(c['dense_reference_flops'])} "
        f"FLOPs: this run used {100 / c['saving_vs_dense']:.1f} % of that, "
        f"{describe_saving(c['saving_vs_dense'])}"
        + (
            " — not a saving: the slim model failed its health check."
            if (report.get("health") or {}).get("status") == "failed"
            else "."
        ),
        "",
        *_image(report, "cost", "training cost against a full dense training"),
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """A report that reads well on GitHub, embedding the plots of ``report["plots"]``."""
    lines = [
        *_summary(report),
        *_health_section(report),
        *_search(report),
        *_channels(report),
        *_training(report),
        *_cost(report),
    ]
    skipped = (report.get("plots") or {}).get("skipped") or {}
    if skipped:
        lines += ["Plots not drawn:", ""]
        lines += [f"- `{name}.png`: {reason}" for name, reason in skipped.items()]
        lines.append("")
    if report["ticket"]["note"]:
        lines += [f"Note: {report['ticket']['note']}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
