"""benchmarks/plan_accuracy.py's verdict and tables, on made-up runs (the benchmark itself
trains for minutes)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import plan_accuracy  # noqa: E402

from ebcompress.engine.trainer import Trainer  # noqa: E402


def _phase(phase: str, train_error: float, wall_error: float | None) -> dict:
    return {
        "phase": phase,
        "epochs": 5,
        "flops_error": 0.0,
        "macs_estimated": phase == "retrain",
        "predicted_train_seconds": 10.0 * (1 + train_error),
        "measured_train_seconds": 10.0,
        "train_seconds_error": train_error,
        "predicted_wall_seconds": 12.0,
        "measured_wall_seconds": 12.0,
        "wall_seconds_error": wall_error,
        "cpu_share_timed": 0.9,
        "cpu_share_run": 0.5,
        "predicted_cpu_seconds": 10.8,
        "measured_cpu_seconds": 6.0,
        "cpu_seconds_error": 0.8,
    }


def _result(*phases: dict) -> dict:
    run = {
        "recipe": "quickstart",
        "method": "eb",
        "ticket_epoch": 5,
        "phases": list(phases),
        "run_wall_seconds": 30.0,
        "phases_wall_predicted": 24.0,
        "load_average": [1.0, 2.0],
    }
    machine = {
        "date": "2026-12-02",
        "platform": "Linux",
        "processor": "x86_64",
        "cpu_count": 2,
        "torch_threads": 1,
        "torch": "2",
    }
    result = {
        "machine": machine,
        "budget": "short",
        "plan_seconds": {"quickstart/eb": 9.0},
        "runs": [run],
        "notes": ["a note"],
    }
    return {**result, "verdict": plan_accuracy.verdicts([run])}


def test_the_verdict_is_the_worst_time_error_of_any_phase() -> None:
    met = _result(_phase("search", 0.1, -0.2), _phase("retrain", 0.05, None))
    assert met["verdict"] == {"target": 0.25, "worst_abs_error": 0.2, "met": True}
    missed = _result(_phase("search", -0.3, 0.1))
    assert missed["verdict"]["met"] is False and missed["verdict"]["worst_abs_error"] == 0.3


def test_markdown_names_the_verdict_every_phase_and_the_load() -> None:
    text = plan_accuracy.markdown(_result(_phase("search", -0.3, 0.1), _phase("retrain", 0, 0)))
    assert "**MISSED**" in text and "-30.0 %" in text
    assert (
        "| quickstart | eb | search | 5 |" in text and "| quickstart | eb | retrain | 5 |" in text
    )
    assert "| 0.90 | 0.50 |" in text  # the CPU share while timed and while run
    assert "- a note" in text


def test_fit_clock_times_each_phase_and_puts_fit_back(monkeypatch) -> None:
    def fake_fit(trainer: object, resume: bool = False) -> str:
        return f"fit {trainer.config.phase}"  # type: ignore[attr-defined]

    monkeypatch.setattr(Trainer, "fit", fake_fit)
    trainer = SimpleNamespace(config=SimpleNamespace(phase="search"))
    with plan_accuracy.FitClock() as clock:
        assert Trainer.fit(trainer) == "fit search"  # type: ignore[arg-type]
        Trainer.fit(trainer)  # type: ignore[arg-type]
    assert Trainer.fit is fake_fit
    assert set(clock.walls) == set(clock.cpu) == {"search"} and clock.walls["search"] >= 0
