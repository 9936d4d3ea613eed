"""The compare picture: test accuracy against training cost, one point per method and ratio.

It is the shape of You et al. (ICLR 2020), Figures 2 and 5: each method a colour and marker,
its ratios joined by a thin line and annotated, training FLOPs on the x axis (log when they
span more than a decade). A second panel puts the same points against the slim network's
forward MACs, the inference cost the pruning buys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.ticker import EngFormatter

from ebcompress.report.plots import new_figure, save_figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _panel(
    ax: Axes,
    rows: Sequence[Mapping[str, Any]],
    x_key: str,
    methods: list[str],
    *,
    x_label: str,
) -> None:
    plotted = [r for r in rows if r.get(x_key) is not None]
    for index, method in enumerate(methods):
        points = sorted(
            (r for r in plotted if r["method"] == method), key=lambda r: r.get("ratio") or 0.0
        )
        if not points:
            continue
        x = [r[x_key] for r in points]
        y = [100 * r["test_top1"] for r in points]
        style = {"color": f"C{index}", "marker": MARKERS[index % len(MARKERS)]}
        ax.plot(x, y, linestyle="-", linewidth=0.8, alpha=0.5, color=style["color"])
        ax.plot(x, y, linestyle="none", markersize=8, label=method, **style)
        for row, xi, yi in zip(points, x, y, strict=True):
            if row.get("ratio") is not None:
                ax.annotate(f"p={row['ratio']:g}", (xi, yi), textcoords="offset points",
                            xytext=(5, 5), fontsize=8)  # fmt: skip
    values = [r[x_key] for r in plotted if r[x_key] > 0]
    if values and max(values) / min(values) > 10:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.margins(x=0.08)  # room for the ratio labels right of the last points
    ax.set_xlabel(x_label)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(alpha=0.3)


def plot_accuracy_vs_flops(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Draw ``rows`` (compare.json's: ``method``, ``ratio``, ``test_top1`` as a fraction,
    ``total_flops``, ``macs`` and more) to the PNG ``path`` and return it.

    A row without ``test_top1`` or ``total_flops`` (a run that did not finish) is left out;
    with none left the picture says so instead of failing the comparison.
    """
    usable = [r for r in rows if r.get("test_top1") is not None and r.get("total_flops")]
    methods = list(dict.fromkeys(r["method"] for r in usable))
    with_macs = any(r.get("macs") is not None for r in usable)
    figure = new_figure(11.0 if with_macs else 6.5, 4.5)
    axes = figure.subplots(1, 2 if with_macs else 1, squeeze=False).ravel()
    if not usable:
        axes[0].text(0.5, 0.5, "no finished run to compare", transform=axes[0].transAxes,
                     ha="center", va="center", fontsize=12, color="gray")  # fmt: skip
        axes[0].set_axis_off()
        return save_figure(figure, path)
    _panel(axes[0], usable, "total_flops", methods,
           x_label="training FLOPs (search + retrain, 3 x 2 x MACs x samples)")  # fmt: skip
    axes[0].set_title("Accuracy vs training cost")
    if with_macs:
        _panel(axes[1], usable, "macs", methods, x_label="forward MACs per image (slim network)")
        axes[1].set_title("Accuracy vs inference cost")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                  ncols=min(len(methods), 6))  # fmt: skip
    return save_figure(figure, path)
