"""A distilled phase in the training ledger: the teacher's forward FLOPs, its dict round trip."""

from __future__ import annotations

import json

import pytest

from ebcompress.cost.flops import PhaseCost, TrainingLedger
from ebcompress.errors import UserError


def _distilled() -> TrainingLedger:
    ledger = TrainingLedger()
    ledger.add("search", macs_per_sample=1000, samples=50, epochs=2, seconds=1.0, joules=4.0)
    ledger.add("retrain", macs_per_sample=300, samples=50, teacher_macs_per_sample=1000)
    ledger.add("retrain", macs_per_sample=300, samples=50, teacher_macs_per_sample=1000)
    return ledger


def test_the_teacher_adds_one_forward_per_trained_sample() -> None:
    retrain = _distilled().phases["retrain"]
    assert (retrain.samples, retrain.epochs, retrain.teacher_macs_per_sample) == (100, 2, 1000)
    assert retrain.teacher_flops == 2 * 1000 * 100
    assert retrain.training_flops == 3 * 2 * 300 * 100 + 2 * 1000 * 100
    ledger = _distilled()
    assert ledger.total_flops == 3 * 2 * 1000 * 100 + retrain.training_flops
    assert ledger.phases["search"].teacher_flops == 0


def test_the_round_trip_keeps_the_teacher_and_only_a_distilled_phase_names_it() -> None:
    ledger = _distilled()
    data = json.loads(json.dumps(ledger.to_dict()))
    search, retrain = data["phases"]
    assert "teacher_macs_per_sample" not in search  # the layout of files before distillation
    assert retrain["teacher_macs_per_sample"] == 1000
    assert retrain["training_flops"] == ledger.phases["retrain"].training_flops
    again = TrainingLedger.from_dict(data)
    assert again.phases == ledger.phases
    assert again.to_dict() == ledger.to_dict()
    restored = TrainingLedger()
    restored.restore(data)  # what a resumed run does with a checkpoint's ledger
    assert restored.phases == ledger.phases


def test_an_old_dict_without_the_key_loads_as_no_teacher() -> None:
    old = {
        "phases": [
            {
                "phase": "retrain",
                "macs_per_sample": 300,
                "samples": 100,
                "epochs": 2,
                "seconds": 1.5,
                "joules": None,
                "training_flops": 3 * 2 * 300 * 100,
            }
        ],
    }
    cost = TrainingLedger.from_dict(old).phases["retrain"]
    assert cost == PhaseCost("retrain", 300, 100, 2, 1.5, None, 0)
    assert cost.training_flops == 3 * 2 * 300 * 100 and cost.teacher_flops == 0


def test_another_teacher_in_the_same_phase_is_a_value_error() -> None:
    ledger = _distilled()
    for teacher in (0, 999):  # none, or another one
        with pytest.raises(ValueError, match=rf"retrain.*teacher 1000.*teacher {teacher}\)"):
            ledger.add("retrain", macs_per_sample=300, samples=50, teacher_macs_per_sample=teacher)
    plain = TrainingLedger()
    plain.add("retrain", macs_per_sample=300, samples=50)
    with pytest.raises(ValueError, match="record a changed model as a new phase"):
        plain.add("retrain", macs_per_sample=300, samples=50, teacher_macs_per_sample=1000)
    assert ledger.phases["retrain"].samples == 100  # the refused adds booked nothing


@pytest.mark.parametrize("bad", [-1, 1.5, "7"])
def test_a_bad_teacher_count_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        TrainingLedger().add("retrain", macs_per_sample=1, samples=1, teacher_macs_per_sample=bad)
    data = _distilled().to_dict()
    data["phases"][1]["teacher_macs_per_sample"] = bad
    with pytest.raises(UserError, match="teacher_macs_per_sample"):
        TrainingLedger.from_dict(data)
