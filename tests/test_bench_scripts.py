"""Smoke tests of the headline benchmark scripts on a tiny fake Fashion-MNIST folder.

They run benchmarks/eb_vs_baselines.py and benchmarks/eb_emergence.py end to end at toy size
(a few seconds of training) and check what they write, and check benchmarks/run_all.py's
dispatch without running the real benchmarks.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from data_fakes import write_fake_fashion_mnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import eb_emergence  # noqa: E402
import eb_vs_baselines  # noqa: E402
import run_all  # noqa: E402
import user_models  # noqa: E402

# Toy size; epsilon 1 with a window of 2 makes the ticket emerge at epoch 2 for certain.
TINY = (
    "data.train_subset=48",
    "data.test_subset=20",
    "train.epochs=3",
    "train.milestones=[2]",
    "train.batch_size=16",
    "model.kwargs={width_mult: 0.125}",
    "prune.window=2",
    "prune.epsilon=1.0",
    "prune.learning_margin=0.01",  # 48 images for 3 epochs: a toy, not a learning test
    "retrain.epochs=3",
)


def _sets(pairs: tuple[str, ...]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=48, n_test=20)


@pytest.mark.slow
def test_eb_vs_baselines_writes_table_and_verdicts(fashion_root: Path, tmp_path: Path) -> None:
    argv = [
        *("--methods", "eb,ns", "--ratios", "0.5", "--data-root", str(fashion_root)),
        *("--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), "--stem", "t"),
        "--quiet",
        *_sets(TINY),
    ]
    result = eb_vs_baselines.main(argv)

    assert [(r["method"], r["ratio"]) for r in result["rows"]] == [("eb", 0.5), ("ns", 0.5)]
    eb, ns = result["rows"]
    # window 2 after the first epoch above chance: epoch 2, or 3 if epoch 1 sat at chance
    assert eb["emerged"] and eb["ticket_epoch"] in (2, 3)
    assert ns["search_epochs"] == 3
    assert all(r["wall_seconds"] > 0 for r in result["rows"])
    (verdict,) = result["targets"]
    assert verdict["flops_ratio"] == pytest.approx(ns["total_flops"] / eb["total_flops"])
    assert verdict["flops_met"] == (verdict["flops_ratio"] >= eb_vs_baselines.FLOPS_TARGET)
    assert verdict["accuracy_met"] == (verdict["accuracy_points"] >= -0.5)
    assert len(verdict["why"]) == [
        verdict["flops_met"],
        verdict["time_met"],
        verdict["accuracy_met"],
    ].count(False)
    for key in ("platform", "cpu_count", "torch", "date"):
        assert key in result["machine"]
    assert result["recipe"]["train"]["epochs"] == 3

    saved = json.loads((tmp_path / "res" / "t.json").read_text())
    assert saved["rows"] == result["rows"]
    text = (tmp_path / "res" / "t.md").read_text()
    assert "| eb | 0.5 |" in text and "| ns | 0.5 |" in text
    assert re.search(r"\| 0\.5 \| [\d.]+x (met|\*\*MISSED\*\*)", text)
    assert (tmp_path / "res" / "t_accuracy_vs_flops.png").stat().st_size > 0

    # A second invocation reads the finished runs back, wall times included.
    again = eb_vs_baselines.main(argv)
    assert [r["wall_seconds"] for r in again["rows"]] == [r["wall_seconds"] for r in result["rows"]]


@pytest.mark.slow
def test_eb_emergence_retrains_each_draw_and_marks_emergence(
    fashion_root: Path, tmp_path: Path
) -> None:
    argv = [
        *("--ratios", "0.5", "--draw-epochs", "1,40", "--retrain-epochs", "2", "--seeds", "0,1"),
        *("--data-root", str(fashion_root), "--results", str(tmp_path), "--stem", "e"),
        *("--runs", str(tmp_path / "runs")),
        *_sets(TINY),
    ]
    result = eb_emergence.main(argv)

    # Epoch 40 lies outside the 3-epoch schedule; the final epoch and emergence are added.
    assert result["config"]["draw_epochs"] == [1, 3]
    assert result["config"]["retrain_milestones"] == [1]  # [2] of 3 epochs scaled onto 2
    assert sorted(result["runs"]) == ["0", "1"]
    for run in result["runs"].values():
        # window 2 after the first epoch above chance: epoch 2, or 3 if epoch 1 sat at chance
        emerged = run["emerged_epochs"]["0.5"]
        assert run["finished"] and emerged in (2, 3)
        points = {p["draw_epoch"]: p for p in run["points"]}
        assert sorted(points) == sorted({1, emerged, 3})
        assert [e for e, p in points.items() if p["emerged_here"]] == [emerged]
        assert all(0.0 <= p["test_top1"] <= 1.0 and p["macs"] > 0 for p in points.values())
        assert points[3]["total_flops"] > points[1]["total_flops"]  # more dense epochs first
        assert all(p["provenance"]["versions"]["torch"] for p in points.values())
        distances = run["window_max_distances"]["0.5"]
        assert len(distances) == 3 and distances[0] is None
        assert run["provenance"]["date"] and run["snapshots"]["tickets.json"]
    # Two seeds: their inits differ, so do their tickets (the seed really is per run).
    tickets = [
        json.loads((tmp_path / "runs" / f"seed{s}" / "tickets.json").read_text()) for s in (0, 1)
    ]
    assert tickets[0]["3"]["0.5"]["groups"] != tickets[1]["3"]["0.5"]["groups"]
    summary = result["summary"]["ratios"]["0.5"]
    assert summary["by_draw_epoch"]["1"]["n"] == 2 and summary["detected"]["n"] == 2
    diff = summary["detected_minus_final_points"]
    assert diff["n"] == 2 and diff["ci"] is not None
    # a toy ticket may retrain to chance (under chance + 10 % of the headroom above it),
    # which no agreement makes a success
    broken = [
        s
        for s, top1 in summary["detected"]["by_seed"].items()
        if top1 / 100 < 0.1 + 0.9 * result["runs"][s]["chance_top1"]
    ]
    assert summary["met"] == (diff["mean"] >= -0.3 and not broken)
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"e.{suffix}").stat().st_size > 0
    text = (tmp_path / "e.md").read_text()
    assert f"| 1 | 0.5 | {result['runs']['1']['emerged_epochs']['0.5']} (emergence) |" in text
    assert "the detected tickets are within 0.3 points of the final ones" in text
    assert "| 0.5 | 1 | " in text and "(2) |" in text  # mean ± sd over 2 seeds


def test_draw_epochs_and_retrain_schedule() -> None:
    assert eb_emergence.draw_epochs_for(24, [2, 5, 10, 20, 40]) == [2, 5, 10, 20, 24]
    recipe = eb_vs_baselines.budget_recipe("fashion_mnist_vgg_p30", "full", [])
    half = eb_emergence.retrain_schedule(recipe.train, recipe.train.epochs // 2)
    assert half.epochs == recipe.train.epochs // 2
    assert half.milestones == [round(m / 2) for m in recipe.train.milestones]
    assert eb_emergence.retrain_schedule(recipe.train, recipe.train.epochs) is recipe.train
    by_eps = eb_emergence.emergence_by_epsilon([None, 0.3, 0.11, 0.09], (0.05, 0.1, 0.12, 0.5))
    assert by_eps == {"0.05": None, "0.1": 4, "0.12": 3, "0.5": 2}


def test_budgets_shrink_the_recipe_and_keep_full_results_apart() -> None:
    full = eb_vs_baselines.budget_recipe("fashion_mnist_vgg_p30", "full", [])
    short = eb_vs_baselines.budget_recipe("fashion_mnist_vgg_p30", "short", ["train.lr=0.05"])
    assert full.data.name == "fashion_mnist"
    assert short.train.epochs < full.train.epochs
    assert short.data.train_subset < full.data.train_subset
    assert short.retrain.epochs == short.train.epochs == 10  # NS would otherwise fine-tune 30
    assert short.train.lr == 0.05  # --set applies after the budget
    assert eb_vs_baselines.budget_stem("eb_vs_baselines", "full") == "eb_vs_baselines"
    assert eb_vs_baselines.budget_stem("eb_vs_baselines", "short") == "eb_vs_baselines_short"


@pytest.mark.parametrize("budget", run_all.BUDGETS)
def test_run_all_passes_only_flags_each_script_defines(budget: str) -> None:
    for bench in run_all.BENCHMARKS:
        assert bench.script.is_file(), f"{bench.script} is missing"
        source = bench.script.read_text(encoding="utf-8")
        for flag in (a for a in bench.argv(budget)[2:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{bench.name} has no {flag} option"


def test_run_all_reports_missing_and_failing_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ok.py").write_text("import sys; sys.exit(0)\n")
    (tmp_path / "boom.py").write_text("import sys; sys.exit(3)\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(
        run_all,
        "BENCHMARKS",
        tuple(run_all.Benchmark(n, full="", short="") for n in ("ok", "boom", "gone")),
    )
    summary = run_all.run_all("short")
    assert [r["status"] for r in summary] == ["ok", "failed (exit 3)", "missing"]
    assert run_all.main(["--only", "ok"]) == 0
    assert run_all.main(["--only", "boom"]) == 1
    assert run_all.main(["--dry-run"]) == 1  # a missing script fails even a dry run
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main(["--only", "nope"])
    assert "gone.py not found" in capsys.readouterr().out


def test_timm_coverage_summary_counts_bn_models_and_names_those_that_barely_shrank():
    import argparse

    import timm_coverage

    records = [
        {"model": "a", "has_bn": True, "step": "done", "params_kept": 0.6},
        {"model": "b", "has_bn": True, "step": "done", "params_kept": 0.99},
        {"model": "c", "has_bn": True, "step": "slim", "error": "UserError: x"},
        {"model": "d", "has_bn": False, "step": "done", "params_kept": 0.7},
        {"model": "e", "step": "dense", "error": "too small"},
    ]
    args = argparse.Namespace(filter="*", per_family=1, size=64, budget=60.0)
    data, md = timm_coverage.summarize(records, args)
    assert (data["with_bn"], data["with_bn_ok"]) == (3, 2)
    assert (data["applicable"], data["applicable_ok"]) == (4, 3)
    assert "| with BatchNorm (target >= 90 %) | 3 | 2 / 3 (66.7 %) |" in md
    assert "1 of them lose under 5 % because most of their groups stay dense (b)" in md
    assert "| c | yes | slim | UserError: x |" in md


# One tiny timm model on the embedded digits (all 1,437 training images, so that it learns in
# 3 epochs): the whole user path, CLI subprocess included, in some 30 s.
USER_TINY = (
    "data.image_size=16",
    "data.test_subset=200",
    "train.epochs=3",
    "train.milestones=[2]",
)


@pytest.mark.slow
def test_user_models_runs_the_cli_on_a_stock_timm_model_and_judges_the_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = "test_resnet" if "test_resnet" in user_models.timm.list_models("test_*") else "resnet10t"
    runs, res = tmp_path / "runs", tmp_path / "res"
    argv = [
        *("--only", arch, "--datasets", "digits", "--runs", str(runs), "--results", str(res)),
        "--quiet",
        *_sets(USER_TINY),
    ]
    result = user_models.main(argv)

    rows = result["rows"]
    assert [(r["dataset"], r["arch"], r["ratio"]) for r in rows] == [
        ("digits", arch, 0.3),
        ("digits", arch, 0.5),
    ]
    (dense,) = result["dense"]
    assert 0.0 < dense["top1"] <= 1.0 and dense["epochs"] == 3
    for row in rows:
        assert row["status"] == "ok", row["message"]
        assert row["dense_ref_top1"] == dense["top1"]
        assert row["delta_points"] == pytest.approx(100 * (row["slim_top1"] - dense["top1"]))
        assert 1 <= row["ticket_epoch"] <= 3 and row["wall_seconds"] > 0
        assert row["params"][1] < row["params"][0] and row["macs"][1] < row["macs"][0]
        assert row["retrain_epochs"] == row["schedule_epochs"] == 3  # the same epoch budget
        assert row["groups"] > 0
        recipe = yaml.safe_load(
            (runs / "digits" / arch / f"recipe_p{round(100 * row['ratio'])}.yaml").read_text()
        )
        assert recipe["model"] == {"name": f"timm:{arch}"}  # timm defaults, no kwargs
        assert recipe["prune"] == {"ratio": row["ratio"]}
    # Each verdict agrees with the rows it was computed from.
    verdicts = {v["target"]: v for v in result["targets"]}
    assert sorted(verdicts) == ["a", "b", "c"]
    for key, verdict in verdicts.items():
        missed = [r for r in rows if r["targets"][key]]
        assert verdict["evaluated"] == len(rows)
        assert verdict["met_by"] == len(rows) - len(missed)
        assert verdict["met"] == (not missed)
        assert len(verdict["misses"]) == len(missed)
    for row in rows:
        chance = row["chance_top1"]
        assert (row["targets"]["a"] == "") == (row["slim_top1"] >= chance + 0.2)
        tolerance = user_models.ACCURACY_TOLERANCE[row["ratio"]]
        assert (row["targets"]["b"] == "") == (row["delta_points"] >= -tolerance)
        unnamed = [g for g in row["groups_below_10pct"] if not g["named_by"]]
        assert (row["targets"]["c"] == "") == (not unnamed)

    saved = json.loads((res / "user_models.json").read_text())
    assert saved["rows"] == rows and saved["complete"]
    text = (res / "user_models.md").read_text()
    assert "## digits" in text
    assert f"| {arch} | resnet | 0.3 |" in text and f"| {arch} | resnet | 0.5 |" in text
    assert len(re.findall(r"^\| \([abc]\) .* \| (met|\*\*MISSED\*\*) \|$", text, re.M)) == 3
    assert "model: {name: 'timm:ARCH'}" in text

    # A second invocation reads everything back: no CLI run, no dense training.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(user_models.subprocess, "Popen", refuse)
    monkeypatch.setattr(user_models, "build_trainer", refuse)
    again = user_models.main(argv)
    assert [r["wall_seconds"] for r in again["rows"]] == [r["wall_seconds"] for r in rows]


def _user_row(**fields: object) -> dict:
    row = {
        "dataset": "digits",
        "arch": "m",
        "ratio": 0.3,
        "status": "ok",
        "message": "",
        "chance_top1": 0.1,
        "slim_top1": 0.95,
        "dense_ref_top1": 0.96,
        "delta_points": -1.0,
        "dense_top1_at_ticket": 0.9,
        "ticket_epoch": 5,
        "emerged": True,
        "pruned_fraction": 0.3,
        "params": [100, 60],
        "test_images": 360,
        "groups_below_10pct": [],
        "health": {"status": "ok", "flags": []},
    }
    return {**row, **fields}


def test_user_models_targets_name_their_causes() -> None:
    low = {"group": "layer1", "width": 64, "kept": 2, "fraction": 2 / 64}
    rows = [
        _user_row(),
        _user_row(
            ratio=0.5,
            slim_top1=0.90,
            delta_points=-6.0,
            groups_below_10pct=[{**low, "named_by": ["capped: min_keep"]}],
        ),
        _user_row(arch="n", groups_below_10pct=[{**low, "named_by": []}]),
        _user_row(
            arch="x",
            status="did not learn",
            message="error: the dense network did not learn",
            slim_top1=None,
        ),
    ]
    verdicts = {v["target"]: v for v in user_models.assess(rows)}
    assert [verdicts[k]["met_by"] for k in "abc"] == [3, 2, 2]
    assert not any(v["met"] for v in verdicts.values())
    assert "did not learn" in verdicts["a"]["misses"][0]["why"]
    assert "-6.00 points, allowed -4" in verdicts["b"]["misses"][0]["why"]
    assert "layer1 keeps 2 of 64" in verdicts["c"]["misses"][0]["why"]  # the unnamed one only
    assert verdicts["c"]["misses"][0]["run"] == "digits n p=0.3"
    assert (
        user_models._status(
            2, "warn\nerror: the dense network did not learn in 3 epochs\n", Path("/nonexistent")
        )
        == "did not learn"
    )
    nan = "error: the training loss became NaN/inf; lower the learning rate\n"
    assert user_models._status(2, nan, Path("/nonexistent")) == "refused"
    assert user_models._status(1, "Traceback\n", Path("/nonexistent")) == "crashed (exit 1)"
    assert user_models._error_line("x\nerror: one line\nlater noise\n") == "error: one line"


@pytest.mark.slow
def test_distill_gain_pairs_each_seed_and_charges_the_teacher(tmp_path) -> None:
    import distill_gain

    argv = [
        *("--seeds", "0,1", "--methods", "eb", "--runs", str(tmp_path / "runs")),
        *("--results", str(tmp_path / "res"), "--stem", "t"),
        *[arg for pair in TINY for arg in ("--set", pair)],
    ]
    result = distill_gain.main(argv)
    keys = sorted((r["seed"], r["protocol"]) for r in result["rows"])
    assert keys == [(0, "distill"), (0, "plain"), (1, "distill"), (1, "plain")]
    for row in result["rows"]:
        assert (row["teacher_flops"] > 0) == (row["protocol"] == "distill")
    # both protocols of a seed retrain the same ticket: the search is trained once
    assert result["summary"]["eb"]["difference"]["n"] == 2
    for seed in (0, 1):
        shared = tmp_path / "runs" / f"seed{seed}" / "shared"
        assert (
            shared.is_dir()
            and not (tmp_path / "runs" / f"seed{seed}" / "plain" / "shared").exists()
        )
    assert "distilled − plain" in (tmp_path / "res" / "t.md").read_text()
