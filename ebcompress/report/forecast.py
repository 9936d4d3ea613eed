"""report.md's "Forecast against measured" section, for a run that recorded a forecast.

``ebcompress prune --plan`` writes ``forecast.json`` (:class:`~ebcompress.cost.forecast.
Forecast`) into the run directory; this section puts each phase of the run's ledger beside
the forecast at the epochs the phase ran. No forecast, no section.
"""

from __future__ import annotations

from ebcompress.cost.forecast import Forecast, PhaseCheck, relative_error
from ebcompress.errors import UserError
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import RunResults


def _count(value: float, unit: str = "") -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _error(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f} %"


def _joules(value: float | None) -> str:
    return "not measured" if value is None else _count(value, "J")


def _row(check: PhaseCheck) -> str:
    mark = "*" if check.macs_estimated else ""
    return (
        f"| {check.phase} | {check.epochs} | {_count(check.predicted_flops)}{mark} "
        f"| {_count(check.measured_flops)} | {_error(check.flops_error)} "
        f"| {check.predicted_train_seconds:.1f} s | {check.measured_train_seconds:.1f} s "
        f"| {_error(check.train_seconds_error)} | {check.predicted_wall_seconds:.1f} s "
        f"| {_joules(check.predicted_joules)} | {_joules(check.measured_joules)} |"
    )


def forecast_section(paths: RunPaths, results: RunResults) -> list[str]:
    """The section's markdown lines; none when the run has no ``forecast.json``, and one
    line saying why when it cannot be read."""
    if not paths.forecast.is_file():
        return []
    try:
        forecast = Forecast.load(paths.forecast)
    except UserError as exc:  # a damaged forecast must not cost the run its report
        return ["## Forecast against measured", "", f"Not shown: {exc}.", ""]
    checks = forecast.check(results.cost.ledger, results.method)
    machine = forecast.machine
    load = machine.get("load_average_1min")
    lines = [
        "## Forecast against measured",
        "",
        f"`ebcompress plan` forecast this run on {forecast.device} "
        f"({machine.get('gpu') or machine.get('processor', '?')}, "
        f"{machine.get('torch_threads', '?')} torch threads"
        + ("" if load is None else f", load average {load:.1f}")
        + f", {machine.get('date', 'date unknown')}) from {forecast.timed_steps} timed steps "
        "per network. Each phase is predicted at the epochs it ran: how long a search lasts "
        "is not known before its ticket emerges, its cost per epoch is.",
        "",
    ]
    if not checks:
        return [
            *lines,
            f"The forecast covers dense training, EB Train and network slimming, not "
            f"method `{results.method}`.",
            "",
        ]
    lines += [
        "| phase | epochs | FLOPs predicted | measured | error | training time predicted "
        "| measured | error | with evaluation predicted | energy predicted | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(check) for check in checks),
        "",
        "Training time is the training passes, the cost table's wall time; the phase with "
        "its evaluation after every epoch is forecast too, but a run does not record it "
        "(`benchmarks/plan_accuracy.py` measures it).",
    ]
    estimated = [c for c in checks if c.macs_estimated]
    for check in estimated:
        error = relative_error(check.predicted_macs, check.measured_macs)
        lines.append(
            f"\\* {check.phase}: forecast on the slim network of a stand-in ticket "
            f"({_count(check.predicted_macs)} MACs per sample); the run's ticket has "
            f"{_count(check.measured_macs)} (forecast {_error(error)})."
        )
    for check in checks:
        if check.predicted_teacher_macs != check.measured_teacher_macs:
            lines.append(
                f"{check.phase}: the run's distillation teacher ran "
                f"{_count(check.measured_teacher_macs)} MACs per sample, the forecast's "
                f"{_count(check.predicted_teacher_macs)} (a forecast made without "
                "`retrain.distill` does not count its forward passes)."
            )
    return [*lines, ""]
