"""`compare`: every method and ratio side by side; finished runs are not run again."""

from __future__ import annotations

import csv
import json

import pytest

import ebcompress.run.compare as compare_module
from ebcompress.recipe import load_recipe
from ebcompress.run.compare import improvement, run_compare

TINY = [
    "train.epochs=3",
    "train.milestones=[2]",
    "train.batch_size=64",
    "data.train_subset=192",
    "data.test_subset=96",
    "prune.window=2",
    "retrain.epochs=1",
    "prune.thinet.samples=16",
]
METHODS = ["eb", "ns", "lt", "snip", "thinet"]


@pytest.mark.slow
def test_compare_on_quickstart_writes_every_row_and_keeps_finished_runs(tmp_path, monkeypatch):
    recipe = load_recipe("quickstart", TINY)
    result = run_compare(recipe, tmp_path, methods=METHODS, ratios=[0.5], progress=False)
    rows = result["rows"]
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        assert row["ratio"] == 0.5 and 0 <= row["test_top1"] <= 1 and row["total_flops"] > 0
    healthy = [r["method"] for r in rows[1:] if r["health"] != "failed"]
    # a toy schedule: competitors near chance are no benchmark, so they may leave none
    assert set(result["improvement"]) == ({"0.5"} if healthy else set())
    if healthy:
        assert result["improvement"]["0.5"]["competitor"] in healthy
    for name in ("compare.json", "compare.csv", "compare.md", "accuracy_vs_flops.png"):
        assert (tmp_path / name).is_file(), name
    with (tmp_path / "compare.csv").open() as handle:
        assert [r["method"] for r in csv.DictReader(handle)] == METHODS
    table = (tmp_path / "compare.md").read_text()
    assert ("improvement (eb vs best other)" in table) == bool(healthy)
    assert "![accuracy vs training FLOPs]" in table

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(compare_module, "run_pipeline", must_not_run)
    again = run_compare(recipe, tmp_path, methods=METHODS, ratios=[0.5], progress=False)
    assert again["rows"] == rows
    assert json.loads((tmp_path / "compare.json").read_text())["rows"] == rows


def test_a_competitor_that_failed_its_health_check_is_skipped():
    rows = [
        {"method": "eb", "ratio": 0.3, "test_top1": 0.90, "total_flops": 100, "seconds": 10},
        {"method": "ns", "ratio": 0.3, "test_top1": 0.95, "total_flops": 250, "seconds": 30,
         "health": "failed"},
        {"method": "lt", "ratio": 0.3, "test_top1": 0.80, "total_flops": 50, "seconds": 20},
    ]  # fmt: skip
    gain = improvement(rows)[0.3]
    assert gain["competitor"] == "lt" and gain["flops_ratio"] == pytest.approx(0.5)


def test_improvement_is_against_the_most_accurate_other_method():
    rows = [
        {"method": "eb", "ratio": 0.3, "test_top1": 0.90, "total_flops": 100, "seconds": 10},
        {"method": "ns", "ratio": 0.3, "test_top1": 0.91, "total_flops": 250, "seconds": 30},
        {"method": "lt", "ratio": 0.3, "test_top1": 0.80, "total_flops": 200, "seconds": 20},
    ]
    gain = improvement(rows)[0.3]
    assert gain["competitor"] == "ns"
    assert gain["accuracy_points"] == pytest.approx(-1.0)
    assert gain["flops_ratio"] == pytest.approx(2.5)
    assert gain["time_ratio"] == pytest.approx(3.0)
