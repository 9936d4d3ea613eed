"""The run and compare plots: real PNGs that are not blank, and figures that say what they must."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_fakes import make_fake_run_dir

import ebcompress.report.plots as plots
import ebcompress.report.plots_compare as plots_compare
from ebcompress.channels.ticket import Ticket
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.report.build import build_report, write_report

EB_PLOTS = {"mask_distance_matrix", "emergence"}
ALL_PLOTS = set(plots.RUN_PLOTS)


def assert_png_with_content(path: Path, *, min_side: int = 300, max_side: int = 8000) -> None:
    """A readable PNG of a sensible size whose pixels vary (not a blank canvas)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    assert pixels.std() > 15.0, f"{path.name} looks blank (pixel std {pixels.std():.1f})"
    assert (pixels < 128).mean() > 0.005, f"{path.name} has almost no dark (drawn) pixels"


@pytest.fixture(scope="module")
def eb_run(tmp_path_factory) -> tuple[Path, dict]:
    """An EB run with 12 channel groups, reported once."""
    run_dir = make_fake_run_dir(tmp_path_factory.mktemp("runs") / "eb", num_groups=12)
    return run_dir, write_report(run_dir)


@pytest.fixture()
def captured(monkeypatch) -> list:
    """Figures handed to save_figure, kept instead of rendered (fast, and inspectable)."""
    figures = []

    def keep(figure, path):
        figures.append(figure)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(plots_compare, "save_figure", keep)
    return figures


def texts(figure) -> str:
    """Every piece of text on a figure: titles, labels, annotations, tick labels, legends."""
    return " ".join(t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text")))


def vertical_lines(ax) -> list[float]:
    """x positions of the axvline markers of an axes, sorted."""
    return sorted(
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if list(line.get_ydata()) == [0, 1] and len(set(line.get_xdata())) == 1
    )


def test_every_plot_of_an_eb_run_is_a_png_with_content(eb_run):
    run_dir, report = eb_run
    assert set(report["plots"]["written"]) == ALL_PLOTS
    assert report["plots"]["skipped"] == {}
    for name, relative in report["plots"]["written"].items():
        assert relative == f"plots/{name}.png"
        assert_png_with_content(run_dir / relative)


def test_channels_plot_grows_with_the_number_of_groups(tmp_path, captured):
    for groups in (6, 60):
        run_dir = make_fake_run_dir(tmp_path / str(groups), num_groups=groups)
        plots.plot_channels_per_layer(Ticket.load(run_dir / "ticket.json"), "unused.png")
    six, sixty = (figure.get_size_inches()[1] for figure in captured)
    assert sixty > 3 * six  # 60 names need room to stay readable


def test_channels_plot_labels_every_group(eb_run, captured):
    ticket = Ticket.load(eb_run[0] / "ticket.json")
    plots.plot_channels_per_layer(ticket, "unused.png")
    ax = captured[0].axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == list(ticket.widths)
    assert f"{ticket.num_kept} of {ticket.num_channels} kept" in ax.get_title()


def test_baseline_run_skips_the_early_bird_plots_and_says_why(tmp_path):
    run_dir = make_fake_run_dir(tmp_path / "ns", method="ns", num_groups=6, joules=True)
    report = write_report(run_dir)
    assert set(report["plots"]["written"]) == ALL_PLOTS - EB_PLOTS
    assert set(report["plots"]["skipped"]) == EB_PLOTS
    assert all("masks/" in reason for reason in report["plots"]["skipped"].values())
    for relative in report["plots"]["written"].values():
        assert_png_with_content(run_dir / relative)
    assert not any((run_dir / "plots" / f"{name}.png").exists() for name in EB_PLOTS)
    markdown = (run_dir / "report.md").read_text()
    assert "mask_distance_matrix.png`: no masks/" in markdown
    assert "(plots/mask_distance_matrix.png)" not in markdown


def test_distance_matrix_has_one_panel_per_ratio_and_marks_the_eb_epoch(eb_run, captured):
    run_dir, report = eb_run
    history = MaskHistory.load(run_dir / "masks")
    emerged = report["search"]["emerged_epochs"]
    plots.plot_mask_distance_matrix(history, "unused.png", eb_epochs=emerged)
    panels = [ax for ax in captured[0].axes if ax.get_images()]
    assert len(panels) == len(history.ratios) == 3
    assert emerged["0.3"] is not None
    for ax, ratio in zip(panels, history.ratios, strict=True):
        matrix = ax.get_images()[0].get_array()
        assert matrix.shape == (len(history.epochs(ratio)),) * 2
        np.testing.assert_allclose(matrix, history.distance_matrix(ratio))
        eb = emerged[f"{ratio:g}"]
        if eb is None:
            assert ax.get_title() == f"p = {ratio:g}: no EB ticket" and not vertical_lines(ax)
        else:
            assert ax.get_title() == f"p = {ratio:g}: EB ticket at epoch {eb}"
            assert vertical_lines(ax) == [history.epochs(ratio).index(eb)]


def test_distance_matrix_says_when_no_ticket_emerged(eb_run, captured):
    history = MaskHistory.load(eb_run[0] / "masks")
    plots.plot_mask_distance_matrix(history, "unused.png", eb_epochs={})
    assert "p = 0.3: no EB ticket" in texts(captured[0])


def test_emergence_draws_epsilon_and_the_window_statistic(eb_run, captured):
    history = MaskHistory.load(eb_run[0] / "masks")
    plots.plot_emergence(history, "unused.png", epsilon=0.1, eb_epochs={"0.3": 7})
    ax = captured[0].axes[0]
    curves = {line.get_label(): line for line in ax.get_lines()}
    assert list(curves["epsilon = 0.1"].get_ydata()) == [0.1, 0.1]
    expected = [d for d in history.window_max_distances(0.3) if d is not None]
    np.testing.assert_allclose(curves["p = 0.3"].get_ydata(), expected)
    assert "window filling" in texts(captured[0])


def test_emergence_with_an_unfilled_window_says_so(captured):
    history = MaskHistory(window=5)
    for epoch in (1, 2):
        history.append(0.3, epoch, np.arange(40) % (epoch + 1) == 0)
    plots.plot_emergence(history, "unused.png", epsilon=0.1, eb_epochs={})
    assert "never filled" in texts(captured[0])


def test_curves_span_the_recipe_schedule_with_lr_decays(eb_run, captured):
    _, report = eb_run
    plots.plot_curves(report["epochs"], "unused.png", schedule_epochs=20, milestones=[10, 15],
                      ticket_epoch=7, ticket_label="EB ticket")  # fmt: skip
    loss_ax, acc_ax = captured[0].axes
    assert acc_ax.get_xlim()[1] >= 20
    assert vertical_lines(acc_ax) == [7, 10, 15]
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert {"search test", "retrain test", "EB ticket (epoch 7)"} <= set(labels)
    top = max(line.get_ydata().max() for line in acc_ax.get_lines() if line.get_marker() == ".")
    assert 50 < top <= 100  # accuracy drawn in percent


@pytest.mark.parametrize("measured", [False, True])
def test_cost_energy_panel_says_not_measured_without_joules(tmp_path, captured, measured):
    run_dir = make_fake_run_dir(tmp_path / "run", joules=measured, num_groups=4)
    results = build_report(run_dir).results
    plots.plot_cost(results, "unused.png")
    flops_ax, time_ax, energy_ax = captured[0].axes
    energy_text = " ".join(t.get_text() for t in energy_ax.texts)
    assert ("not measured" in energy_text) is not measured
    assert "not measured" not in " ".join(t.get_text() for t in time_ax.texts)
    dense_bar = [p for p in flops_ax.patches if p.get_x() > 0.5]
    assert len(dense_bar) == 1
    assert dense_bar[0].get_height() == pytest.approx(results.cost.dense_reference_flops)
    assert sum(p.get_height() for p in flops_ax.patches if p.get_x() < 0.5) == pytest.approx(
        results.cost.total_flops
    )


COMPARE_ROWS = [
    {"method": m, "ratio": p, "test_top1": acc - p / 20, "total_flops": flops * (1 - p / 2),
     "seconds": 10.0, "params": 1e6 * (1 - p), "macs": 3e8 * (1 - p)}
    for m, acc, flops in (("eb", 0.93, 4e14), ("ns", 0.935, 1.2e15), ("lt", 0.92, 5e15))
    for p in (0.3, 0.5, 0.7)
]  # fmt: skip


def test_accuracy_vs_flops_png_has_content(tmp_path):
    path = plots_compare.plot_accuracy_vs_flops(COMPARE_ROWS, tmp_path / "accuracy_vs_flops.png")
    assert path == tmp_path / "accuracy_vs_flops.png"
    assert_png_with_content(path)


def test_accuracy_vs_flops_one_point_per_method_and_ratio(captured):
    unfinished = {"method": "snip", "ratio": 0.5, "test_top1": None, "total_flops": None}
    plots_compare.plot_accuracy_vs_flops([*COMPARE_ROWS, unfinished], "unused.png")
    figure = captured[0]
    training_ax = figure.axes[0]
    points = [line for line in training_ax.get_lines() if line.get_linestyle() == "None"]
    assert [line.get_label() for line in points] == ["eb", "ns", "lt"]
    assert sum(len(line.get_xdata()) for line in points) == 9
    assert training_ax.get_xscale() == "log"  # the FLOPs span more than a decade
    assert texts(figure).count("p=0.5") == 2 * 3  # annotated in both panels
    np.testing.assert_allclose(
        sorted(points[0].get_ydata()), sorted(100 * r["test_top1"] for r in COMPARE_ROWS[:3])
    )


def test_accuracy_vs_flops_without_finished_runs_still_draws(tmp_path, captured):
    plots_compare.plot_accuracy_vs_flops([{"method": "eb", "test_top1": None}], "unused.png")
    assert "no finished run to compare" in texts(captured[0])
