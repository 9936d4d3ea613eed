"""benchmarks/slim_epoch_speed.py: its plan of configurations, its verdicts, and one toy run
on a fake Fashion-MNIST folder end to end."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from data_fakes import write_fake_fashion_mnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _shared  # noqa: E402
import _slim_epoch_report as report  # noqa: E402
import slim_epoch_speed as bench  # noqa: E402
from slim_epoch_speed import Config  # noqa: E402


def test_every_slim_row_has_its_dense_reference_timed_first() -> None:
    args = argparse.Namespace(round_to=[8], batches=[256], compile=True)
    plan = bench.configs([0.3, 0.5], args)
    dense = [c for c in plan if c.ratio is None]
    assert plan[: len(dense)] == dense  # dense rows first, each once
    assert len(set(plan)) == len(plan)
    for c in plan:
        assert c.dense() in dense
        assert c.dense().batch == 128  # a larger batch is judged against the batch-128 dense net
    assert Config(0.5, compile=True) in plan and Config(0.3, compile=True) not in plan
    assert Config(0.5, 8, channels_last=True, batch=256) in plan
    assert Config(batch=256) in dense  # shown, though no row is judged against it
    assert Config(0.5, 8, channels_last=True).lever == "round_to=8, channels_last"
    assert Config().lever == "plain"


def _row(ratio: float | None, lever: str, speedup: float, macs: float, **extra: object) -> dict:
    return {
        "ratio": ratio,
        "lever": lever,
        "compile": False,
        "speedup": speedup,
        "speedup_vs_plain_dense": speedup,
        "mac_reduction": macs,
        "efficiency": speedup / macs,
        "epoch_s": 10.0 / speedup,
        "epoch_steps": 469,
        "step_ms": 20.0 / speedup,
        **extra,
    }


def test_the_target_is_judged_on_the_plain_row_and_the_best_lever_named() -> None:
    rows = [
        _row(None, "plain", 1.0, 1.0),
        _row(0.5, "plain", 2.0, 4.0),
        _row(0.5, "round_to=8, channels_last", 3.0, 3.2),
    ]
    (line,) = [x for x in report.target_lines(rows) if x]
    assert "**MISSED** by the plain slim net (2.00x for 4.00x fewer MACs: 50 %)" in line
    assert "most efficient lever is round_to=8, channels_last (94 %, met)" in line

    compiled = _row(None, "compile", 1.25, 1.0, compile=True, compile_s=20.0)
    (payoff,) = [x for x in report.compile_lines([rows[0], compiled]) if x]
    assert "+2.0 s per epoch" in payoff and "pays off after 10.0 epochs" in payoff


@pytest.mark.slow
def test_a_toy_run_writes_rows_whose_numbers_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_fake_fashion_mnist(tmp_path / "fmnist", n_train=300, n_test=30)
    monkeypatch.setattr(_shared, "RESULTS", tmp_path / "res")
    data = bench.main(
        [
            *("--ratios", "0.5", "--round-to", "8", "--batches", "256", "--no-compile"),
            *("--rounds", "1", "--block", "1", "--ticket-steps", "2", "--engine-steps", "1"),
            *("--set", f"data.root={root}", "--stem", "toy"),
        ]
    )
    rows = {(r["ratio"], r["lever"]): r for r in data["rows"]}
    assert (None, "plain") in rows and (0.5, "round_to=8, channels_last, batch 256") in rows
    plain = rows[None, "plain"]
    assert plain["speedup"] == pytest.approx(1.0) and plain["mac_reduction"] == 1.0
    for (ratio, lever), r in rows.items():
        assert r["epoch_s"] == pytest.approx(r["step_ms"] / 1e3 * r["epoch_steps"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["mac_reduction"])
        per_sample = r["step_ms"] / r["batch"]
        assert r["speedup_vs_plain_dense"] == pytest.approx(plain["step_ms"] / 128 / per_sample)
        if ratio is not None:
            assert r["mac_reduction"] > 1.5 and len(r["widths"]) == 8
        if "round_to=8" in lever:
            assert all(w % 8 == 0 for w in r["widths"])
    assert set(data["profile"]) == {"dense", "p=0.5", "dense channels_last", "p=0.5 channels_last"}
    assert len(data["engine"]) == 6 and all(e["epoch_s"] >= e["train_s"] for e in data["engine"])
    saved = json.loads((tmp_path / "res" / "toy.json").read_text())
    assert saved["rows"] == data["rows"]
    text = (tmp_path / "res" / "toy.md").read_text()
    assert "**Target at p = 0.5**" in text and "Engine check" in text
