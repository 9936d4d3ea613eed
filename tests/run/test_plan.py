"""``make_forecast`` on a tiny recipe, against a real run of the same recipe: the FLOPs are the
ledger's exactly (a distillation teacher's forward included), the times are positive and shaped
per phase, the RNGs are left alone."""

from __future__ import annotations

import pytest
import torch

from ebcompress.cost.flops import TrainingLedger, count_flops, training_flops
from ebcompress.data import load_data
from ebcompress.errors import UserError
from ebcompress.methods.data import data_options
from ebcompress.models import build_model
from ebcompress.recipe import load_recipe
from ebcompress.run.pipeline import run_pipeline
from ebcompress.run.plan import TIMED_EPOCHS, _teacher, make_forecast, samples_per_epoch
from ebcompress.run.state import read_state

# 129 training images in batches of 64: the engine drops the final batch of one, so an
# epoch trains 128, which the forecast must know to match the ledger exactly.
TINY = [
    "data.train_subset=129",
    "data.test_subset=64",
    "train.epochs=4",
    "train.milestones=[2]",
    "train.batch_size=64",
    "model.kwargs={width_mult: 0.125}",
    "prune.window=2",
    "prune.epsilon=1.0",
    "prune.learning_margin=0.01",
    "retrain.epochs=3",
]


@pytest.fixture(scope="module")
def tiny() -> tuple:
    recipe = load_recipe("quickstart", TINY)
    return recipe, make_forecast(recipe, device="cpu", steps=2, eval_batches=1)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> dict:
    recipe, _ = tiny
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    run_pipeline(recipe, run_dir, device="cpu", progress=False)
    return {"ledger": read_state(run_dir).results.cost.ledger, "results": read_state(run_dir)}


def test_samples_per_epoch_drops_a_final_batch_of_one() -> None:
    assert samples_per_epoch(129, 64) == 128
    assert samples_per_epoch(130, 64) == 130
    assert samples_per_epoch(128, 64) == 128
    assert samples_per_epoch(1, 64) == 1


@pytest.mark.slow
def test_the_flops_forecast_is_the_ledger_of_a_real_run_exactly(tiny, finished) -> None:
    _, forecast = tiny
    ledger = finished["ledger"]
    checks = {c.phase: c for c in forecast.check(ledger, "eb")}
    assert set(checks) == {"search", "retrain"}
    search = checks["search"]
    assert search.predicted_flops == search.measured_flops
    assert search.predicted_macs == ledger.phases["search"].macs_per_sample
    # The retraining's MACs are a stand-in ticket's; at the run's MACs the formula is exact.
    retrain = checks["retrain"]
    rate = forecast.rate("eb", "retrain")
    assert rate is not None and rate.macs_estimated
    cost = ledger.phases["retrain"]
    assert rate.flops(cost.epochs, macs_per_sample=cost.macs_per_sample) == cost.training_flops
    assert retrain.epochs == cost.epochs == 3
    assert rate.samples_per_epoch * cost.epochs == cost.samples == 128 * 3
    # the stand-in slims the same network at the same ratio: MACs within a factor of 2
    assert 0.5 < rate.macs_per_sample / cost.macs_per_sample < 2.0
    # the dense reference is the dense rate over the whole schedule
    dense = forecast.rate("dense", "train")
    results = finished["results"].results
    assert dense.flops(4) == results.cost.dense_reference_flops * 128 // 129
    assert dense.flops(4) == training_flops(results.model.dense.macs, 128, 4)


@pytest.mark.slow
def test_the_forecast_has_every_phase_with_positive_times(tiny) -> None:
    recipe, forecast = tiny
    assert forecast.recipe == recipe.name and forecast.method == "eb" and forecast.device == "cpu"
    assert set(forecast.rates) == {"dense", "eb", "ns"}
    assert set(forecast.rates["eb"]) == set(forecast.rates["ns"]) == {"search", "retrain"}
    assert forecast.timed_steps == 2 * TIMED_EPOCHS
    for method, phases in forecast.rates.items():
        for phase, rate in phases.items():
            assert rate.train_seconds > 0 and rate.eval_seconds > 0, (method, phase)
            assert rate.wall_time(3) > rate.train_time(3) > 0
            assert rate.samples_per_epoch == 128
    # dense training has neither the BN-L1 penalty nor the mask drawing of EB's search
    eb, ns, dense = (
        forecast.rate(m, p) for m, p in (("eb", "search"), ("ns", "search"), ("dense", "train"))
    )
    assert dense.train_seconds <= ns.train_seconds == eb.train_seconds
    assert ns.other_seconds <= eb.other_seconds
    assert (
        dense.macs_per_sample == eb.macs_per_sample > forecast.rate("eb", "retrain").macs_per_sample
    )
    assert {"data", "dense_model", "eb_detector", "slim"} <= set(forecast.setup_seconds)


@pytest.mark.slow
def test_the_scenarios_follow_the_recipe(tiny) -> None:
    _, forecast = tiny
    by_method: dict[str, list[dict[str, int]]] = {}
    for scenario in forecast.scenarios:
        by_method.setdefault(scenario.method, []).append(scenario.epochs)
    assert by_method["dense"] == [{"train": 4}]
    assert by_method["ns"] == [{"search": 4, "retrain": 3}]
    # EB: the ticket no earlier than the window (2), up to the limit (train.epochs here)
    searches = [epochs["search"] for epochs in by_method["eb"]]
    assert searches == sorted(set(searches)) and searches[0] >= 2 and searches[-1] == 4
    assert all(epochs["retrain"] == 3 for epochs in by_method["eb"])
    labels = [s.label for s in forecast.scenarios if s.method == "eb"]
    assert labels[-1] == "no ticket by epoch 4"
    assert len(forecast.estimates()) == 1 + 2 + 2 * len(searches)


@pytest.mark.slow
def test_the_forecast_leaves_the_global_rngs_as_it_found_them() -> None:
    recipe = load_recipe("quickstart", TINY)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    make_forecast(recipe, device="cpu", steps=1, eval_batches=1)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_a_distilled_retraining_is_forecast_with_its_teachers_forward() -> None:
    recipe = load_recipe("quickstart", [*TINY, "retrain.distill={teacher: dense}"])
    forecast = make_forecast(recipe, device="cpu", steps=1, eval_batches=1)
    rate, dense = forecast.rate("eb", "retrain"), forecast.rate("dense", "train")
    assert rate is not None and dense is not None and forecast.rate("ns", "retrain") == rate
    teacher = rate.teacher_macs_per_sample
    # the dense net teaches, counted in eval mode as it runs (BatchNorm: fewer ops)
    assert dense.macs_per_sample > teacher > rate.macs_per_sample
    assert teacher > 0.95 * dense.macs_per_sample
    search = forecast.rate("eb", "search")
    assert search is not None and search.teacher_macs_per_sample == 0
    assert dense.teacher_macs_per_sample == 0
    # the ledger's formula: the student's 3 x 2 x MACs x samples plus the teacher's forward
    student = training_flops(rate.macs_per_sample, 128, 3)
    assert rate.flops(3) == student + 2 * teacher * 128 * 3
    ledger = TrainingLedger()
    ledger.add("retrain", macs_per_sample=rate.macs_per_sample, samples=128, epochs=3,
               teacher_macs_per_sample=teacher)  # fmt: skip
    assert ledger.phases["retrain"].training_flops == rate.flops(3)
    (check,) = forecast.check(ledger, "eb")
    assert check.flops_error == 0 and check.predicted_teacher_macs == teacher
    assert any("distilling from the dense network" in note for note in forecast.notes)


def test_a_file_teacher_is_timed_in_its_architecture_without_reading_the_file() -> None:
    distill = "{teacher: missing.safetensors, model: vgg11_cifar, kwargs: {width_mult: 0.25}}"
    recipe = load_recipe("quickstart", [*TINY, f"retrain.distill={distill}"])
    data = load_data(data_options(recipe.data), seed=recipe.seed)
    student = build_model("vgg11_cifar", data.num_classes, data.in_chans, width_mult=0.125)
    cpu = torch.device("cpu")
    teacher, note = _teacher(recipe, data, student, cpu)
    assert teacher is not None and teacher.teacher is not student
    assert teacher.config.alpha == 0.5 and teacher.config.temperature == 4.0
    size = (data.in_chans, data.image_size, data.image_size)
    assert teacher.macs_per_sample == count_flops(teacher.teacher, size, training=False).macs
    assert teacher.macs_per_sample > count_flops(student, size).macs
    assert "missing.safetensors is not read" in note
    assert _teacher(load_recipe("quickstart", TINY), data, student, cpu) == (None, "")


def test_nonsense_sizes_are_user_errors() -> None:
    with pytest.raises(UserError, match="steps"):
        make_forecast(load_recipe("quickstart"), steps=0)
