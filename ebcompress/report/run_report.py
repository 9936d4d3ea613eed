"""What a run's report holds (:class:`RunReport`) and the phrases it, the plots and the CLI
share.

A module of its own so that :mod:`ebcompress.report.build` (which draws the plots) and
:mod:`ebcompress.report.plots` (which draws from a report) both import it instead of each
other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ebcompress.channels.ticket import Ticket
from ebcompress.report.health import RunHealth
from ebcompress.run.paths import MASKS, MODEL, PLOTS, REPORT_MD, TICKET
from ebcompress.run.results import RunResults


@dataclass(frozen=True)
class RunReport:
    """A finished run's report: its results, and what the report derives from the run
    directory. :meth:`to_dict` is report.json's content."""

    results: RunResults
    finished: str | None  # when state.json was last written
    recipe: dict[str, Any] | None  # recipe.yaml as written, None when it is missing
    epochs: list[dict[str, Any]]  # metrics.jsonl's records
    health: RunHealth
    has_masks: bool
    plots: dict[str, dict[str, str]] | None = None  # write_run_plots' written / skipped
    budget: dict[str, Any] | None = None  # budget_summary's, for a ticket drawn to a budget

    def to_dict(self) -> dict[str, Any]:
        report = self.results.to_dict()
        cost = report["cost"]
        report["timing"] = {
            "seconds_per_phase": self.results.cost.seconds_per_phase,
            "total_seconds": cost.pop("total_seconds"),
            "finished": self.finished,
        }
        for phase in cost["phases"]:
            del phase["seconds"]
        report["recipe"] = self.recipe
        report["epochs"] = self.epochs
        report["health"] = self.health.to_dict()
        report["files"] = {
            "ticket": TICKET,
            "model": f"{MODEL}/",
            "masks": f"{MASKS}/" if self.has_masks else None,
            "plots": f"{PLOTS}/",
            "report_md": REPORT_MD,
        }
        if self.plots is not None:
            report["plots"] = self.plots
        if self.budget is not None:
            report["budget"] = self.budget
        return report


def budget_summary(ticket: Ticket, results: RunResults) -> dict[str, Any] | None:
    """The budget ``ticket`` was drawn to beside what the slim network achieved, counted
    (``count_flops`` of the network retrained, from ``results``); None without a budget.

    ``estimated`` is the channel graph's count when the ticket was drawn; ``achieved`` the
    counted share; ``within_tolerance`` whether it lies in [``(1 - tol) * target``, target].
    """
    budget = ticket.budget
    if budget is None:
        return None
    model = results.model
    dense, slim = (
        (model.dense.macs, model.slim.macs)
        if budget.measure == "macs"
        else (model.dense.params, model.slim.params)
    )
    achieved = slim / max(dense, 1)
    low = (1 - BUDGET_TOLERANCE) * budget.target
    return {
        "measure": budget.measure,
        "target": budget.target,
        "achieved": achieved,
        "estimated": budget.achieved,
        "dense": dense,
        "slim": slim,
        "ratio": ticket.ratio,
        "tolerance": BUDGET_TOLERANCE,
        "within_tolerance": low - 1e-12 <= achieved <= budget.target + 1e-12,
    }


#: How far below its budget a ticket may land and still count as meeting it (2 % of it).
BUDGET_TOLERANCE = 0.02


def describe_saving(saving_vs_dense: float) -> str:
    """``"2.50x fewer FLOPs"``, or ``"1.12x more FLOPs"`` when a run cost more than dense."""
    if saving_vs_dense >= 1:
        return f"{saving_vs_dense:.2f}x fewer FLOPs"
    return f"{1 / saving_vs_dense:.2f}x more FLOPs"
