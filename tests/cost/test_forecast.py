"""The forecast's arithmetic, its JSON, and its check against a ledger (no training here;
tests/run/test_plan.py times real networks)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ebcompress.cost.flops import TrainingLedger, training_flops
from ebcompress.cost.forecast import Forecast, PhaseRate, Scenario, relative_error
from ebcompress.errors import UserError

SEARCH = PhaseRate(
    macs_per_sample=1000,
    samples_per_epoch=640,
    train_seconds=2.0,
    eval_seconds=0.5,
    other_seconds=0.1,
    first_train_extra=0.3,
    first_epoch_extra=0.4,
    joules=20.0,
)
RETRAIN = PhaseRate(
    macs_per_sample=400,
    samples_per_epoch=640,
    train_seconds=1.0,
    eval_seconds=0.25,
    other_seconds=0.0,
    macs_estimated=True,
)


def _forecast(**changes: object) -> Forecast:
    fields = {
        "recipe": "quickstart",
        "method": "eb",
        "device": "cpu",
        "machine": {"date": "2026-12-02", "torch_threads": 1},
        "timed_steps": 40,
        "rates": {"eb": {"search": SEARCH, "retrain": RETRAIN}, "dense": {"train": SEARCH}},
        "scenarios": (
            Scenario("dense", "full schedule", {"train": 30}),
            Scenario("eb", "ticket at epoch 5", {"search": 5, "retrain": 30}),
        ),
        "setup_seconds": {"data": 1.5},
        "notes": ("a note",),
    }
    return Forecast(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_phase_is_its_epochs_times_the_rate_plus_the_first_epochs_extra() -> None:
    assert SEARCH.flops(7) == training_flops(1000, 640, 7) == 3 * 2 * 1000 * 640 * 7
    assert SEARCH.flops(7, macs_per_sample=10) == 3 * 2 * 10 * 640 * 7
    assert SEARCH.train_time(5) == pytest.approx(5 * 2.0 + 0.3)
    assert SEARCH.wall_time(5) == pytest.approx(5 * 2.6 + 0.4)
    assert SEARCH.energy(5) == pytest.approx(100.0)
    assert RETRAIN.energy(5) is None  # not measured stays not measured
    # a phase that does not run costs nothing, warm-up included
    assert SEARCH.flops(0) == 0 and SEARCH.train_time(0) == 0 and SEARCH.wall_time(0) == 0


def test_estimates_list_every_phase_of_every_scenario() -> None:
    rows = _forecast().estimates()
    assert [(r.method, r.phase, r.epochs) for r in rows] == [
        ("dense", "train", 30),
        ("eb", "search", 5),
        ("eb", "retrain", 30),
    ]
    eb_retrain = rows[2]
    assert eb_retrain.flops == training_flops(400, 640, 30)
    assert eb_retrain.macs_estimated and eb_retrain.joules is None
    assert rows[1].wall_seconds == pytest.approx(SEARCH.wall_time(5))


def test_check_puts_each_phase_of_the_ledger_beside_the_forecast_at_its_epochs() -> None:
    ledger = TrainingLedger()
    for _ in range(4):  # the search ran 4 epochs, not any of the scenarios' counts
        ledger.add("search", macs_per_sample=1000, samples=640, seconds=2.5, joules=None)
    ledger.add("retrain", macs_per_sample=500, samples=640, epochs=3, seconds=2.0)
    search, retrain = _forecast().check(ledger)
    assert search.phase == "search" and search.epochs == 4
    assert search.predicted_flops == search.measured_flops == ledger.phases["search"].training_flops
    assert search.flops_error == 0
    assert search.predicted_train_seconds == pytest.approx(4 * 2.0 + 0.3)
    assert search.train_seconds_error == pytest.approx((8.3 - 10.0) / 10.0)
    assert search.predicted_joules == pytest.approx(80.0) and search.measured_joules is None
    assert search.joules_error is None
    # the retraining forecast's MACs were a stand-in's: the FLOPs error is the MACs error
    assert retrain.macs_estimated and retrain.epochs == 3
    assert retrain.flops_error == pytest.approx(400 / 500 - 1)
    assert set(retrain.to_dict()) >= {"flops_error", "train_seconds_error", "joules_error"}


def test_check_leaves_out_what_the_forecast_does_not_cover() -> None:
    ledger = TrainingLedger()
    ledger.add("search", macs_per_sample=1000, samples=640)
    assert _forecast().check(ledger, "lt") == []
    ledger.add("finetune", macs_per_sample=1000, samples=640)
    assert [c.phase for c in _forecast().check(ledger)] == ["search"]


def test_a_distilled_rate_counts_its_teachers_forward_as_the_ledger_does() -> None:
    distilled = replace(RETRAIN, teacher_macs_per_sample=1000)
    assert distilled.flops(3) == training_flops(400, 640, 3) + 2 * 1000 * 640 * 3
    ledger = TrainingLedger()
    ledger.add("retrain", macs_per_sample=400, samples=640, epochs=3, teacher_macs_per_sample=1000)
    (check,) = _forecast(rates={"eb": {"retrain": distilled}}).check(ledger)
    assert check.predicted_flops == check.measured_flops == ledger.phases["retrain"].training_flops
    assert check.predicted_teacher_macs == check.measured_teacher_macs == 1000
    # JSON: kept, and a file written before distillation reads as no teacher
    data = _forecast(rates={"eb": {"retrain": distilled}}).to_dict()
    assert Forecast.from_dict(data).rate("eb", "retrain") == distilled
    del data["rates"]["eb"]["retrain"]["teacher_macs_per_sample"]
    assert Forecast.from_dict(data).rate("eb", "retrain") == RETRAIN


def test_json_round_trip(tmp_path) -> None:
    forecast = _forecast()
    path = tmp_path / "forecast.json"
    forecast.save(path)
    assert Forecast.load(path) == forecast
    assert json.loads(path.read_text())["format"] == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("rates"),
        lambda d: d.update(format=99),
        lambda d: d["rates"]["eb"]["search"].update(train_seconds=-1.0),
        lambda d: d["rates"]["eb"]["search"].update(eval_seconds=float("nan")),
        lambda d: d["scenarios"][0].pop("epochs"),
        lambda d: d["rates"].update(eb=[1, 2]),
        lambda d: d["rates"]["eb"]["retrain"].update(teacher_macs_per_sample=-1),
    ],
)
def test_a_damaged_forecast_is_one_user_error_naming_the_file(tmp_path, damage) -> None:
    data = _forecast().to_dict()
    damage(data)
    path = tmp_path / "forecast.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="forecast.json") as info:
        Forecast.load(path)
    assert "\n" not in str(info.value)


def test_unreadable_files_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="cannot read forecast"):
        Forecast.load(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not an ebcompress forecast"):
        Forecast.load(tmp_path / "list.json")


def test_relative_error() -> None:
    assert relative_error(12.0, 10.0) == pytest.approx(0.2)
    assert relative_error(None, 10.0) is None
    assert relative_error(1.0, 0.0) is None
