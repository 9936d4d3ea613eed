"""Pictures of one run directory, as PNG files in ``plots/``.

Everything is drawn from the run directory alone (the ``RunReport`` built from ``state.json``
and ``metrics.jsonl``, ``masks/`` and ``ticket.json``), so ``ebcompress report`` can redraw it
at any time. Figures are created on matplotlib's Agg canvas directly (no pyplot): that needs no
display and never switches the backend of a user's own session.

The Early-Bird plots follow You et al. (ICLR 2020): the pairwise mask-distance matrix over
epochs is their Figure 3, the max distance in the FIFO window against epsilon is the emergence
test of their Algorithm 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from ebcompress.atomic import atomic_path
from ebcompress.channels.ticket import Ticket
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.errors import UserError
from ebcompress.report.run_report import RunReport, describe_saving
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import RunResults

DPI = 110
EB_MARK = "tab:red"
PHASE_COLOURS = {"search": "tab:blue", "retrain": "tab:orange"}
OTHER_COLOURS = ("tab:green", "tab:purple", "tab:brown", "tab:olive")

# Every plot of a run directory, in the order of the report.
RUN_PLOTS = ("mask_distance_matrix", "emergence", "channels_per_layer", "curves", "cost")


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, with constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as PNG atomically; no software tag, so a redraw gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def phase_colour(phase: str, index: int) -> str:
    """The same colour for a phase in every plot; ``index`` picks one for other names."""
    return PHASE_COLOURS.get(phase, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def _ratio_key(ratio: float) -> str:
    return f"{ratio:g}"


# ----------------------------------------------------------------------------- Early-Bird


def plot_mask_distance_matrix(
    history: MaskHistory, path: str | os.PathLike[str], *, eb_epochs: Mapping[str, int | None]
) -> Path:
    """One heat map per watched ratio: the normalised Hamming distance between the masks of
    every pair of recorded epochs (You et al., Figure 3), the Early-Bird epoch marked.

    ``eb_epochs`` maps ``f"{ratio:g}"`` to the epoch the ticket emerged at (or None).
    """
    ratios = history.ratios
    columns = min(len(ratios), 3)
    rows = -(-len(ratios) // columns)
    figure = new_figure(3.6 * columns + 0.8, 3.5 * rows + 0.4)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    matrices = [history.distance_matrix(r) for r in ratios]
    top = max((float(m.max()) for m in matrices if m.size), default=0.0) or 1.0
    image = None
    for ax, ratio, matrix in zip(axes, ratios, matrices, strict=False):
        epochs = history.epochs(ratio)
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
        # Round epoch numbers as ticks, placed at their row (epochs need not start at 1).
        shown = MaxNLocator(nbins=8, integer=True).tick_values(epochs[0], epochs[-1])
        shown = [int(e) for e in shown if int(e) in epochs]
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_ticks([epochs.index(e) for e in shown], labels=[str(e) for e in shown])
        ax.set_xlabel("epoch")
        ax.set_ylabel("epoch")
        eb = eb_epochs.get(_ratio_key(ratio))
        title = f"p = {ratio:g}"
        if eb is not None and eb in epochs:
            at = epochs.index(eb)
            ax.axhline(at, color=EB_MARK, linestyle="--", linewidth=1.2)
            ax.axvline(at, color=EB_MARK, linestyle="--", linewidth=1.2)
            title += f": EB ticket at epoch {eb}"
        else:
            title += ": no EB ticket"
        ax.set_title(title, fontsize=10)
    for ax in axes[len(ratios) :]:
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=list(axes[: len(ratios)]), label="mask distance", shrink=0.85)
    figure.suptitle("Pairwise mask distance between epochs (0 = identical masks)")
    return save_figure(figure, path)


def plot_emergence(
    history: MaskHistory,
    path: str | os.PathLike[str],
    *,
    epsilon: float,
    eb_epochs: Mapping[str, int | None],
) -> Path:
    """Per watched ratio, the Early-Bird statistic (max distance between the newest mask and
    the others in the FIFO window) per epoch, with the threshold ``epsilon``: the ticket
    emerges at the first epoch below it (You et al., Algorithm 1)."""
    figure = new_figure(7.5, 4.2)
    ax = figure.subplots()
    plotted = 0
    for index, ratio in enumerate(history.ratios):
        colour = f"C{index}"
        points = [
            (epoch, value)
            for epoch, value in zip(
                history.epochs(ratio), history.window_max_distances(ratio), strict=True
            )
            if value is not None
        ]
        if not points:
            continue
        epochs, values = zip(*points, strict=True)
        ax.plot(epochs, values, marker="o", markersize=4, color=colour, label=f"p = {ratio:g}")
        plotted += 1
        eb = eb_epochs.get(_ratio_key(ratio))
        if eb in epochs:
            ax.plot([eb], [values[epochs.index(eb)]], marker="*", markersize=16, color=colour,
                    markeredgecolor="black", linestyle="none")  # fmt: skip
    ax.axhline(epsilon, color="black", linestyle="--", linewidth=1, label=f"epsilon = {epsilon:g}")
    recorded = sorted({e for r in history.ratios for e in history.epochs(r)})
    filling = recorded[: history.window - 1]
    if filling:
        ax.axvspan(filling[0] - 0.5, filling[-1] + 0.5, color="gray", alpha=0.15,
                   label="window filling")  # fmt: skip
    if not plotted:
        ax.text(0.5, 0.6, f"the FIFO window ({history.window} masks) never filled",
                transform=ax.transAxes, ha="center", fontsize=11)  # fmt: skip
    if recorded:
        ax.set_xlim(recorded[0] - 0.5, recorded[-1] + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("max mask distance in window")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = [v for r in history.ratios for v in history.window_max_distances(r) if v is not None]
    ax.set_ylim(0, 1.15 * max([epsilon, *drawn]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Early-Bird emergence (window {history.window}; star = ticket emerged)")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- structure


def plot_channels_per_layer(ticket: Ticket, path: str | os.PathLike[str]) -> Path:
    """Dense width and kept channels of every prunable group, one horizontal bar pair per
    group in network order; the height grows with the number of groups so that every group
    name stays readable (50+ groups for a ResNet-50)."""
    names = list(ticket.widths)
    widths = np.array([ticket.widths[n] for n in names])
    kept = np.array([len(ticket.kept[n]) for n in names])
    count = len(names)
    font = 8 if count <= 60 else 6
    figure = new_figure(8.0, min(2.0 + 0.2 * count, 60.0))
    ax = figure.subplots()
    rows = np.arange(count)
    ax.barh(rows, widths, height=0.8, color="lightgray", edgecolor="gray", label="dense")
    ax.barh(rows, kept, height=0.5, color="tab:blue", label="kept")
    for row, (width, k) in enumerate(zip(widths, kept, strict=True)):
        ax.text(width, row, f" {k}/{width}", va="center", fontsize=font - 1)
    ax.set_yticks(rows, labels=names, fontsize=font)
    ax.set_ylim(count - 0.5, -0.5)
    ax.set_xlim(0, widths.max() * 1.18)
    ax.set_xlabel("channels")
    ax.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=9)
    ax.set_title(
        f"Channels per group at p = {ticket.ratio:g}: {ticket.num_kept} of "
        f"{ticket.num_channels} kept ({ticket.pruned_fraction:.1%} pruned)",
        fontsize=10,
    )
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- training


def plot_curves(
    epochs: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    schedule_epochs: int | None = None,
    milestones: Sequence[int] = (),
    ticket_epoch: int | None = None,
    ticket_label: str = "ticket",
) -> Path:
    """Loss and top-1 accuracy per epoch of every phase on the recipe's epoch axis
    (``0..schedule_epochs``): training dashed, test solid, learning-rate decays dotted and the
    epoch the ticket was drawn at marked."""
    phases = list(dict.fromkeys(record["phase"] for record in epochs))
    figure = new_figure(10.0, 4.0)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for index, phase in enumerate(phases):
        colour = phase_colour(phase, index)
        records = [r for r in epochs if r["phase"] == phase]
        x = [r["epoch"] for r in records]
        for key, style, what in (("train", "--", "train"), ("test", "-", "test")):
            loss_ax.plot(x, [r[f"{key}_loss"] for r in records], style, marker=".",
                         color=colour, label=f"{phase} {what}")  # fmt: skip
            acc_ax.plot(x, [100 * r[f"{key}_top1"] for r in records], style, marker=".",
                        color=colour, label=f"{phase} {what}")  # fmt: skip
    losses = [r[k] for r in epochs for k in ("train_loss", "test_loss") if r[k] > 0]
    if losses and max(losses) / min(losses) > 20:
        loss_ax.set_yscale("log")
    last = max([schedule_epochs or 0, *(r["epoch"] for r in epochs)])
    for ax, label in ((loss_ax, "loss"), (acc_ax, "top-1 accuracy (%)")):
        for milestone in milestones:
            ax.axvline(milestone, color="gray", linestyle=":", linewidth=1)
        if ticket_epoch is not None:
            ax.axvline(ticket_epoch, color=EB_MARK, linestyle="--", linewidth=1.2,
                       label=f"{ticket_label} (epoch {ticket_epoch})")  # fmt: skip
        ax.set_xlim(0, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch" + (" (dotted: lr decay)" if milestones else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    figure.legend(*acc_ax.get_legend_handles_labels(), loc="outside lower center",
                  ncols=5, fontsize=8)  # fmt: skip
    loss_ax.set_title("Loss")
    acc_ax.set_title("Top-1 accuracy")
    return save_figure(figure, path)


def _dense_extrapolation(results: RunResults, measured: Mapping[str, float | None]) -> float | None:
    """What a full dense training would take of a quantity measured per phase (seconds,
    joules): scaled by FLOPs from a phase that trained the dense network, else None. A phase
    with a distillation teacher is not one: its time and FLOPs include the teacher's passes."""
    cost = results.cost
    for phase in cost.phases:
        value = measured.get(phase.phase)
        dense = phase.macs_per_sample == results.model.dense.macs
        if dense and not phase.teacher_macs_per_sample and phase.training_flops and value:
            return value * cost.dense_reference_flops / phase.training_flops
    return None


def _cost_panel(
    ax: Axes,
    per_phase: Mapping[str, float | None],
    dense: float | None,
    *,
    title: str,
    formatter: EngFormatter,
    extrapolated: bool,
) -> None:
    ax.set_title(title)
    if not per_phase or any(v is None for v in per_phase.values()):
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center",
                fontsize=13, color="gray")  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        return
    bottom = 0.0
    for index, (phase, value) in enumerate(per_phase.items()):
        ax.bar(0, value, bottom=bottom, width=0.6, label=phase, color=phase_colour(phase, index))
        bottom += value
    ax.text(0, bottom, formatter(bottom), ha="center", va="bottom", fontsize=9)
    if dense is not None:
        ax.bar(1, dense, width=0.6, color="lightgray", edgecolor="gray",
               hatch="//" if extrapolated else None)  # fmt: skip
        ax.text(1, dense, formatter(dense), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(bottom, dense or 0.0) * 1.15 or 1.0)
    if dense is None:
        dense_label = "dense\n(no dense phase to\nextrapolate from)"
    else:
        dense_label = "dense\n(extrapolated)" if extrapolated else "dense"
    ax.set_xticks([0, 1], labels=["this run", dense_label])
    ax.set_xlim(-0.6, 1.6)
    ax.yaxis.set_major_formatter(EngFormatter(unit=formatter.unit))
    ax.grid(axis="y", alpha=0.3)


def plot_cost(results: RunResults, path: str | os.PathLike[str]) -> Path:
    """Training FLOPs, wall time and measured energy of this run, stacked by phase, beside a
    full dense training of the same recipe. Dense FLOPs are counted; its wall time and energy
    are extrapolated from a phase that trained the dense network (hatched) or left out."""
    cost = results.cost
    flops = {p.phase: float(p.training_flops) for p in cost.phases}
    joules = {p.phase: p.joules for p in cost.phases}
    figure = new_figure(11.0, 4.0)
    flops_ax, time_ax, energy_ax = figure.subplots(1, 3)
    _cost_panel(flops_ax, flops, float(cost.dense_reference_flops), title="training FLOPs",
                formatter=EngFormatter(places=1), extrapolated=False)  # fmt: skip
    for ax, measured, title, unit in (
        (time_ax, cost.seconds_per_phase, "wall time", "s"),
        (energy_ax, joules, "energy", "J"),
    ):
        _cost_panel(ax, measured, _dense_extrapolation(results, measured), title=title,
                    formatter=EngFormatter(unit=unit, places=1), extrapolated=True)  # fmt: skip
    figure.legend(*flops_ax.get_legend_handles_labels(), loc="outside lower center",
                  ncols=len(cost.phases), fontsize=9)  # fmt: skip
    total = EngFormatter(unit="FLOPs", places=1)(cost.total_flops)
    figure.suptitle(f"Training cost of this run ({total}) vs a full dense training: "
                    f"{describe_saving(cost.saving_vs_dense)}")  # fmt: skip
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- run directory


def write_run_plots(run_dir: str | os.PathLike[str], report: RunReport) -> dict[str, Any]:
    """Draw every plot of :data:`RUN_PLOTS` that the run directory has the data for into
    ``run_dir/plots`` and return ``{"written": {name: relative path}, "skipped": {name:
    reason}}``. Runs without ``masks/`` (methods other than EB) skip the Early-Bird plots."""
    paths = RunPaths(run_dir)
    written: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def target(name: str) -> Path:
        path = paths.plot(name)
        written[name] = paths.relative(path)
        return path

    results, recipe = report.results, report.recipe or {}
    history, why_not = _load_history(paths.masks)
    eb_epochs = results.search.emerged_epochs or {}
    if history is None:
        skipped["mask_distance_matrix"] = skipped["emergence"] = why_not
    else:
        plot_mask_distance_matrix(history, target("mask_distance_matrix"), eb_epochs=eb_epochs)
        epsilon = recipe.get("prune", {}).get("epsilon")
        if epsilon is None:
            skipped["emergence"] = "recipe.yaml names no prune.epsilon"
        else:
            plot_emergence(history, target("emergence"), epsilon=epsilon, eb_epochs=eb_epochs)

    if paths.ticket.is_file():
        plot_channels_per_layer(Ticket.load(paths.ticket), target("channels_per_layer"))
    else:
        skipped["channels_per_layer"] = "no ticket.json"

    if report.epochs:
        train = recipe.get("train", {})
        ticket = results.ticket
        plot_curves(
            report.epochs,
            target("curves"),
            schedule_epochs=train.get("epochs"),
            milestones=train.get("milestones", []) if train.get("schedule") == "multistep" else [],
            ticket_epoch=ticket.epoch,
            ticket_label="EB ticket" if ticket.emerged and history is not None else "ticket",
        )
    else:
        skipped["curves"] = "metrics.jsonl holds no epochs"

    plot_cost(results, target("cost"))
    return {"written": written, "skipped": skipped}


def _load_history(folder: Path) -> tuple[MaskHistory | None, str]:
    if not folder.is_dir():
        return None, "no masks/ (only Early-Bird search records a mask per epoch)"
    try:
        history = MaskHistory.load(folder)
    except UserError as exc:
        return None, str(exc)
    if not history.ratios:
        return None, "masks/ records no epoch"
    return history, ""
