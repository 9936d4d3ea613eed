"""benchmarks/headline.py and compare_sharing.py at toy size: seeds and protocols
accumulate, finished runs are read back, the page reports the paired EB - NS difference and
the targets; shared and independent compares agree."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from data_fakes import write_fake_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import headline  # noqa: E402

TINY = (
    "train.epochs=3",
    "train.milestones=[2]",
    "train.batch_size=16",
    "model.kwargs={width_mult: 0.125}",
    "prune.window=2",
    "prune.epsilon=1.0",  # every ratio emerges at epoch 2
    "prune.learning_margin=0.01",
    "retrain.epochs=2",
)


@pytest.mark.slow
def test_headline_accumulates_seeds_and_pairs_eb_with_ns(tmp_path, monkeypatch) -> None:
    root = write_fake_fashion_mnist(tmp_path / "fmnist", n_train=48, n_test=20)
    argv = [
        *("--seeds", "0,1", "--baselines", "snip", "--ratios", "0.5", "--finetune-epochs", "1"),
        *("--data-root", str(root), "--runs", str(tmp_path / "runs")),
        *("--results", str(tmp_path / "res"), "--stem", "t", "--quiet"),
        *[arg for pair in TINY for arg in ("--set", pair)],
    ]
    result = headline.main(argv)
    keys = {(r["seed"], r["protocol"], r["method"]) for r in result["rows"]}
    assert keys == {
        *((s, p, m) for s in (0, 1) for p in ("paper", "finetune") for m in ("eb", "ns")),
        (0, "paper", "snip"),
    }
    paper = next(e for e in result["eb_vs_ns"] if e["protocol"] == "paper")
    # a toy run at chance fails its health check: it is left out of the pairing, and said so
    failed = {m: sorted(by_seed) for m, by_seed in paper["failed"].items() if by_seed}
    assert paper["seeds"] == [s for s in (0, 1) if all(s not in v for v in failed.values())]
    if failed:
        assert "left out of the pairing" in (tmp_path / "res" / "t.md").read_text()
    # the finetune protocol retrained from the paper protocol's searches: none trained twice
    by_run = {(r["seed"], r["protocol"], r["method"]): r for r in result["rows"]}
    for seed in (0, 1):
        for method in ("eb", "ns"):
            a, b = by_run[(seed, "paper", method)], by_run[(seed, "finetune", method)]
            assert a["shared_search"] == b["shared_search"] is not None
            assert a["search_flops"] == b["search_flops"]
            assert b["retrain_epochs"] == 1 and a["retrain_epochs"] == 2
    assert [d["method"] for d in result["dense"]] == ["ns", "ns"]
    events = [(j["job"], j["event"]) for j in result["jobs"]]
    assert events[:2] == [("seed0/paper", "start"), ("seed0/paper", "finish")]
    assert all("load_average" in j and "versions" in j for j in result["jobs"])
    page = (tmp_path / "res" / "t.md").read_text()
    assert "EB against network slimming, paired by seed (paper)" in page
    assert "## Protocol `finetune`" in page and (tmp_path / "res" / "t.png").is_file()

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(headline, "run_compare", must_not_train)
    again = headline.main([*argv, "--report-only"])
    assert again["rows"] == result["rows"]
    assert json.loads((tmp_path / "res" / "t.json").read_text())["rows"] == result["rows"]
    # another machine: the run folders are gone, the results file is not; nothing is rerun,
    # and a job adding a method trains only that method
    shutil.rmtree(tmp_path / "runs")
    elsewhere = headline.main(argv)
    assert elsewhere["rows"] == result["rows"] and elsewhere["dense"] == result["dense"]
    assert len(elsewhere["jobs"]) == len(result["jobs"])


@pytest.mark.slow
def test_compare_sharing_measures_both_modes_and_checks_they_agree(tmp_path) -> None:
    import compare_sharing

    result = compare_sharing.main(
        [
            *("--budget", "short", "--methods", "eb,ns", "--ratios", "0.3,0.7"),
            *("--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")),
        ]
    )
    assert result["differing"] == []
    assert result["shared"]["flops"] < result["independent"]["flops"]
    assert result["wall_share"] > 0 and set(result["cost"]) == {"eb", "ns"}
    page = (tmp_path / "res" / "compare_sharing_short.md").read_text()
    assert "Same tickets and slim weights in every run: yes" in page
    # the verdict on the target line itself ("met" alone would match "methods" anywhere)
    verdict = re.search(r"independent runs': \d+%, (met|\*\*MISSED\*\*)\.", page)
    assert verdict is not None
    assert (verdict.group(1) == "met") == (result["wall_share"] <= compare_sharing.TARGET)
    assert ("Why it is missed" in page) == (verdict.group(1) != "met")


def test_the_pairing_leaves_out_broken_runs_and_gives_an_interval() -> None:
    import _headline_report as report

    def row(method, seed, top1, flops, status="ok"):
        return {
            "seed": seed, "protocol": "paper", "method": method, "ratio": 0.5,
            "test_top1": top1, "total_flops": flops, "seconds": flops / 1e9,
            "search_flops": 0.4 * flops,
            "ticket_epoch": 4 if method == "eb" else 20, "retrain_epochs": 20,
            "search_epochs": 4 if method == "eb" else 20,
            "slim_macs": 50, "dense_macs": 100, "window_max_distances": [None, 0.3, 0.12],
            "health": {"status": status, "flags": ["near chance"] if status == "failed" else []},
        }  # fmt: skip

    rows = [row("eb", s, 0.90 + 0.001 * s, 1e12) for s in range(3)]
    rows += [row("ns", s, 0.905, 3.5e12) for s in range(2)]
    rows.append(row("ns", 2, 0.10, 3.5e12, status="failed"))
    (entry,) = report._eb_vs_ns(rows)
    assert entry["seeds"] == [0, 1] and entry["failed"]["ns"] == {2: ["near chance"]}
    assert entry["points"]["n"] == 2 and entry["points"]["ci"] is not None
    assert entry["flops_ratio"] == pytest.approx(3.5)
    assert entry["targets"]["flops"] is True and entry["search_bound"] == pytest.approx(5.0)
    assert entry["epsilon_epochs"]["0.15"] == [3, 3]
    # had EB stopped at epoch 3: 3 of its 4 search epochs (1e11 each) + its 6e11 retraining
    assert entry["epsilon_flops_ratio"]["0.15"] == pytest.approx(3.5e12 / 9e11)
    assert entry["epsilon_flops_ratio"]["0.1"] is None  # the mask test never stopped there


def test_a_job_runs_only_the_methods_the_results_lack(tmp_path, monkeypatch) -> None:
    rows = [{"seed": 0, "protocol": "paper", "method": m, "ratio": 0.5} for m in ("eb", "ns")]
    (tmp_path / "t.json").write_text(json.dumps({"rows": rows}))
    called = []
    monkeypatch.setattr(
        headline, "run_job", lambda r, runs, s, p, methods, a: called.append((s, p, methods))
    )
    monkeypatch.setattr(headline, "write_page", lambda *a: {"rows": []})
    headline.main(
        [
            "--seeds",
            "0",
            "--baselines",
            "snip",
            "--ratios",
            "0.5",
            "--results",
            str(tmp_path),
            "--stem",
            "t",
            "--runs",
            str(tmp_path / "runs"),
        ]
    )
    assert called == [(0, "finetune", ["eb", "ns"]), (0, "paper", ["snip"])]


def test_each_baseline_is_a_job_of_its_own_after_the_paired_seeds() -> None:
    order = headline.jobs([0, 1], [0], ["lt", "snip"])
    assert order == [
        (0, "paper", ["eb", "ns"]),
        (0, "finetune", ["eb", "ns"]),
        (1, "paper", ["eb", "ns"]),
        (1, "finetune", ["eb", "ns"]),
        (0, "paper", ["eb", "ns", "lt"]),  # EB and NS are already done by then: skipped
        (0, "paper", ["eb", "ns", "snip"]),
    ]


def test_a_missed_interval_is_told_apart_from_a_missed_mean() -> None:
    import _headline_report as report

    def entry(mean: float, low: float) -> dict:
        return {
            "protocol": "finetune", "ratio": 0.5, "seeds": [0, 1, 2], "flops_ratio": 3.2,
            "wall_ratio": 3.1, "eb_ticket_epochs": [9, 9, 9], "failed": {"eb": {}, "ns": {}},
            "points": {"n": 3, "mean": mean, "sd": 0.24, "ci": [low, mean - low]},
            "targets": {"flops": True, "accuracy": False, "wall": True},
        }  # fmt: skip

    wide = "\n".join(report._targets({"eb_vs_ns": [entry(-0.01, -0.61)]}, "finetune"))
    assert "within the target, but over 3 seeds the interval reaches -0.61" in wide
    assert "trails NS" not in wide
    behind = "\n".join(report._targets({"eb_vs_ns": [entry(-0.5, -0.9)]}, "finetune"))
    assert "EB trails NS by 0.50 points over 3 seeds" in behind
